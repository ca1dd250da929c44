//! Device approval: an app may require that each new device (client key) is
//! approved by its user on the web before it can run commands, and may
//! revoke a device later.
//!
//! A device is known by the fingerprint of its key ([`ClientInfo::device`]),
//! which the secure handshake proves. An unknown device gets a short
//! approval code; the app shows a link to its own "approve this device" page
//! (behind its web login) where the user enters or confirms the code.
//!
//! A registry kept in a file is saved by a thread of its own: a change
//! returns at once, and the changes made while a save runs go to disk
//! together in the next one. A client making new keys in a loop (each one a
//! new pending device) therefore never holds a runtime thread in `fsync`,
//! and costs at most one write of the file at a time.
//! [`DeviceRegistry::saved`] waits until the changes made so far are on
//! disk; an app awaits it before it tells a user a revocation took effect.
//!
//! [`ClientInfo::device`]: crate::ClientInfo::device

use std::collections::BTreeMap;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::runtime::RuntimeFlavor;
use tokio::sync::{Notify, watch};

use crate::context::Context;

/// Where a device stands.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "status", rename_all = "snake_case")]
#[non_exhaustive]
pub enum DeviceStatus {
    /// Waiting for its user to approve it with this code.
    Pending {
        /// The approval code shown to the user.
        code: String,
    },
    /// May run commands.
    Approved,
    /// Refused for good (until approved again).
    Revoked,
}

/// One device the app has seen.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Device {
    /// Its key's fingerprint.
    pub fingerprint: String,
    /// What the client said about itself (`linux x86_64, terminalwire 0.1.0`),
    /// control, format and bidi characters removed: still words a client
    /// chose, to be shown as such.
    pub label: String,
    /// Where it stands.
    #[serde(flatten)]
    pub status: DeviceStatus,
    /// When it became pending, as a count: the registry keeps at most
    /// [`MAX_PENDING`] pending devices and forgets the oldest first.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub pending_since: u64,
}

fn is_zero(value: &u64) -> bool {
    *value == 0
}

/// Most devices kept waiting for approval. Any client can make a new key,
/// and each unknown key becomes pending: without a bound, a client making
/// keys in a loop would grow the registry (and its file) without end.
pub const MAX_PENDING: usize = 1024;

/// Longest label kept, in characters (the client writes it).
pub const MAX_LABEL_CHARS: usize = 160;

/// Why a device may not run a command.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DeviceError {
    /// Not approved (yet): the user must approve it with `code`.
    #[error("this device is not approved yet; approve it with code {code}")]
    NotApproved {
        /// The approval code.
        code: String,
    },
    /// The device was revoked.
    #[error("this device was revoked; ask the app's administrator")]
    Revoked,
    /// Its approval code was given up while it waited: more devices were
    /// waiting than the registry keeps ([`MAX_PENDING`]).
    #[error("the approval code expired while too many devices were waiting; run the command again")]
    Forgotten,
    /// The client has no device key ([`crate::ClientInfo::device`] `None`),
    /// so there is no device to approve.
    #[error(
        "this client cannot prove which device it runs on; update it to a client with device keys"
    )]
    NoDeviceKey,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct Devices {
    devices: BTreeMap<String, Device>,
    /// Changes made since the registry was loaded; the saver's progress is
    /// counted in these.
    #[serde(skip)]
    generation: u64,
}

/// The app's devices, in memory or persisted in a JSON file.
#[derive(Debug, Clone)]
pub struct DeviceRegistry {
    state: Arc<Mutex<Devices>>,
    changed: Arc<Notify>,
    saver: Option<Arc<SaverHandle>>,
}

impl DeviceRegistry {
    /// A registry that forgets everything when the process ends.
    pub fn in_memory() -> Self {
        DeviceRegistry {
            state: Arc::default(),
            changed: Arc::default(),
            saver: None,
        }
    }

    /// A registry kept in `path` (JSON, written atomically, 0600).
    ///
    /// A thread saves the changes (see the [module](self)); dropping the
    /// last clone of the registry waits for the last save.
    pub fn load_or_create(path: &Path) -> io::Result<Self> {
        let mut devices: Devices = match std::fs::read(path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|error| {
                io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("{}: {error}", path.display()),
                )
            })?,
            Err(error) if error.kind() == io::ErrorKind::NotFound => Devices::default(),
            Err(error) => return Err(error),
        };
        // Labels saved before they were cleaned are cleaned as they load.
        for device in devices.devices.values_mut() {
            device.label = crate::login::shown_text(&device.label, MAX_LABEL_CHARS);
        }
        let state = Arc::new(Mutex::new(devices));
        let saver = SaverHandle::start(path.to_path_buf(), Arc::clone(&state))?;
        Ok(DeviceRegistry {
            state,
            changed: Arc::default(),
            saver: Some(Arc::new(saver)),
        })
    }

    /// Runs `change` on the devices; saves them unless it says it changed
    /// nothing (so that, say, wrong approval codes posted in a loop write
    /// nothing), and wakes the waiting commands when it changed what they
    /// wait for ([`Change`]).
    fn update<T>(&self, change: impl FnOnce(&mut Devices) -> (T, Change)) -> T {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        let (result, change) = change(&mut state);
        if change == Unchanged {
            return result;
        }
        state.generation += 1;
        let generation = state.generation;
        drop(state);
        if let Some(saver) = &self.saver {
            saver.shared.want(generation);
        }
        if change == Changed {
            self.changed.notify_waiters();
        }
        result
    }

    /// Returns once every change made before the call is on disk (at once
    /// for a registry in memory), or with the error of the save that
    /// failed. A later change that saves well clears an earlier error.
    pub async fn saved(&self) -> io::Result<()> {
        let Some(saver) = &self.saver else {
            return Ok(());
        };
        let target = self
            .state
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .generation;
        let mut progress = saver.shared.progress.subscribe();
        let outcome = progress
            .wait_for(|progress| progress.saved >= target)
            .await
            .map_err(|_| io::Error::other("the device registry's saver has stopped"))?;
        match &outcome.error {
            Some(error) => Err(io::Error::other(format!(
                "cannot save the device registry to {}: {error}",
                saver.shared.file.display()
            ))),
            None => Ok(()),
        }
    }

    /// Every device, by fingerprint.
    pub fn list(&self) -> Vec<Device> {
        let state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        state.devices.values().cloned().collect()
    }

    /// The device's status, if the app has seen it.
    pub fn status(&self, fingerprint: &str) -> Option<DeviceStatus> {
        let state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        state
            .devices
            .get(fingerprint)
            .map(|device| device.status.clone())
    }

    /// Whether the device may run commands; an unknown device becomes
    /// pending with a new code.
    pub fn check(&self, fingerprint: &str, label: &str) -> Result<(), DeviceError> {
        match self.waiting(fingerprint) {
            // Not known yet: it becomes pending below.
            Err(DeviceError::Forgotten) => {}
            known => return known,
        }
        let code = new_code(fingerprint);
        // The client wrote it: with bidi or invisible characters kept, it
        // could read as another device's label on the app's devices page.
        let label = crate::login::shown_text(label, MAX_LABEL_CHARS);
        self.update(|state| {
            // Another session of the same device may have added it since
            // `waiting` looked: its code stands.
            if let Some(device) = state.devices.get(fingerprint) {
                return (verdict(Some(device)), Unchanged);
            }
            let pending: Vec<(u64, &String)> = state
                .devices
                .values()
                .filter(|device| matches!(device.status, DeviceStatus::Pending { .. }))
                .map(|device| (device.pending_since, &device.fingerprint))
                .collect();
            let since = pending
                .iter()
                .map(|(since, _)| since + 1)
                .max()
                .unwrap_or(1);
            // A new pending device concerns no one waiting, unless it
            // pushes out the oldest (whose command then learns it at once).
            let mut change = Added;
            if pending.len() >= MAX_PENDING
                && let Some((_, oldest)) = pending.iter().min().map(|(s, f)| (*s, (*f).clone()))
            {
                state.devices.remove(&oldest);
                change = Changed;
            }
            state.devices.insert(
                fingerprint.to_owned(),
                Device {
                    fingerprint: fingerprint.to_owned(),
                    label,
                    status: DeviceStatus::Pending { code: code.clone() },
                    pending_since: since,
                },
            );
            (Err(DeviceError::NotApproved { code }), change)
        })
    }

    /// Approves the pending device with this code; false if none has it.
    ///
    /// A web page that calls this on a form post must make sure the post
    /// comes from the app's own page and its logged-in user: refuse posts
    /// from other sites (a cross-site `Origin` or `Sec-Fetch-Site`, or a
    /// missing CSRF token) and forbid framing (`X-Frame-Options: DENY`,
    /// `Content-Security-Policy: frame-ancestors 'none'`). Otherwise any
    /// site its user visits can approve an attacker's device with the code
    /// the attacker's own terminal showed. The `hello` example shows the
    /// checks.
    pub fn approve(&self, code: &str) -> bool {
        let code = code.trim().to_ascii_uppercase();
        self.update(|state| {
            let found = state.devices.values_mut().find(
                |device| matches!(&device.status, DeviceStatus::Pending { code: c } if *c == code),
            );
            match found {
                Some(device) => {
                    device.status = DeviceStatus::Approved;
                    (true, Changed)
                }
                None => (false, Unchanged),
            }
        })
    }

    /// Revokes a device; false if unknown.
    ///
    /// A web page that calls this on a form post must guard against
    /// cross-site requests and framing as for [`approve`](Self::approve);
    /// otherwise another site can lock its user's devices out.
    pub fn revoke(&self, fingerprint: &str) -> bool {
        self.update(|state| match state.devices.get_mut(fingerprint) {
            // Nothing to save (a page posting it again writes nothing).
            Some(device) if device.status == DeviceStatus::Revoked => (true, Unchanged),
            Some(device) => {
                device.status = DeviceStatus::Revoked;
                (true, Changed)
            }
            None => (false, Unchanged),
        })
    }

    /// For a command: returns when the client's device is approved. An
    /// unknown or pending device is told to approve it at `approve_url`
    /// (with the code) and may wait up to `wait` for that; a revoked one is
    /// refused at once.
    pub async fn require(
        &self,
        ctx: &Context,
        approve_url: &str,
        wait: Duration,
    ) -> Result<(), DeviceError> {
        let client = ctx.client();
        let Some(device) = client.device.as_deref() else {
            return Err(DeviceError::NoDeviceKey);
        };
        let label = format!(
            "{} {}, {} {}",
            client.os, client.arch, client.name, client.version
        );
        let deadline = tokio::time::Instant::now() + wait;
        let mut told = false;
        loop {
            let changed = self.changed.notified();
            // Once told its code, the device is only looked up: added again
            // after it was forgotten, it would have a code the user never
            // saw, and push out the next device waiting, and so on.
            let now = if told {
                self.waiting(device)
            } else {
                self.check(device, &label)
            };
            match now {
                Ok(()) => return Ok(()),
                Err(DeviceError::NotApproved { code }) if !told => {
                    told = true;
                    let _ = ctx
                        .stderr()
                        .println(format!(
                            "This device is new to this app. Approve it at {approve_url} with code {code}."
                        ))
                        .await;
                    if wait.is_zero() {
                        return Err(DeviceError::NotApproved { code });
                    }
                    let _ = ctx.stderr().println("Waiting for approval...").await;
                }
                Err(error @ (DeviceError::Revoked | DeviceError::Forgotten)) => return Err(error),
                Err(_) => {}
            }
            tokio::select! {
                () = changed => {}
                () = tokio::time::sleep_until(deadline) => {
                    return self.waiting(device);
                }
            }
        }
    }

    /// [`check`](Self::check) for a device already told its code: never
    /// adds it.
    fn waiting(&self, fingerprint: &str) -> Result<(), DeviceError> {
        let state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        verdict(state.devices.get(fingerprint))
    }
}

/// What an update did to the registry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Change {
    /// Changed what a waiting command may see: saved, and the waiters woken.
    Changed,
    /// Added a device no one waits for yet: saved only. (Waking every
    /// waiting command for each new key a client makes in a loop would
    /// cost the server a wake-up per waiter per key.)
    Added,
    /// Nothing.
    Unchanged,
}
use Change::{Added, Changed, Unchanged};

/// Whether a device the registry has (or not) may run commands.
fn verdict(device: Option<&Device>) -> Result<(), DeviceError> {
    match device.map(|device| &device.status) {
        Some(DeviceStatus::Approved) => Ok(()),
        Some(DeviceStatus::Revoked) => Err(DeviceError::Revoked),
        Some(DeviceStatus::Pending { code }) => {
            Err(DeviceError::NotApproved { code: code.clone() })
        }
        None => Err(DeviceError::Forgotten),
    }
}

/// An 8-character code (no 0/O/1/I) derived from the fingerprint and the
/// time, so that codes are hard to guess and differ between requests.
fn new_code(fingerprint: &str) -> String {
    use sha2::{Digest, Sha256};
    const ALPHABET: &[u8] = b"ABCDEFGHJKLMNPQRSTUVWXYZ23456789";
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_nanos());
    let seed = std::collections::hash_map::RandomState::new();
    let random = std::hash::BuildHasher::hash_one(&seed, nanos);
    let digest = Sha256::new()
        .chain_update(fingerprint.as_bytes())
        .chain_update(nanos.to_le_bytes())
        .chain_update(random.to_le_bytes())
        .finalize();
    digest[..8]
        .iter()
        .map(|b| ALPHABET[usize::from(*b) % ALPHABET.len()] as char)
        .collect()
}

/// What the saver thread shares with the registry.
#[derive(Debug)]
struct Saver {
    file: PathBuf,
    /// The newest generation a change asked to save, and whether the
    /// registry is gone.
    wanted: Mutex<Wanted>,
    wake: Condvar,
    /// What is on disk, for [`DeviceRegistry::saved`].
    progress: watch::Sender<SaveProgress>,
    /// Files written, for tests.
    writes: std::sync::atomic::AtomicU64,
    /// Held by a test to stall the saver as a slow disk would.
    #[cfg(test)]
    stall: Mutex<()>,
}

#[derive(Debug, Default)]
struct Wanted {
    generation: u64,
    closing: bool,
}

#[derive(Debug, Default)]
struct SaveProgress {
    /// Every change up to this generation is on disk (or its save failed).
    saved: u64,
    /// Why the last save failed, if it did.
    error: Option<String>,
}

impl Saver {
    fn want(&self, generation: u64) {
        let mut wanted = self.wanted.lock().unwrap_or_else(PoisonError::into_inner);
        wanted.generation = wanted.generation.max(generation);
        drop(wanted);
        self.wake.notify_one();
    }

    /// The thread: saves the newest state whenever it is newer than the
    /// file, until the registry is gone and everything is saved.
    fn run(&self, state: &Mutex<Devices>) {
        let mut saved = 0;
        loop {
            let mut wanted = self.wanted.lock().unwrap_or_else(PoisonError::into_inner);
            while wanted.generation <= saved && !wanted.closing {
                wanted = self
                    .wake
                    .wait(wanted)
                    .unwrap_or_else(PoisonError::into_inner);
            }
            if wanted.generation <= saved {
                return;
            }
            drop(wanted);
            #[cfg(test)]
            drop(self.stall.lock().unwrap_or_else(PoisonError::into_inner));
            // A copy, so that the registry is not locked while it is encoded
            // and written.
            let (devices, generation) = {
                let state = state.lock().unwrap_or_else(PoisonError::into_inner);
                (state.devices.clone(), state.generation)
            };
            let result = save(&self.file, &devices);
            self.writes
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            if let Err(error) = &result {
                tracing::error!(%error, file = %self.file.display(), "cannot save the device registry");
            }
            saved = generation;
            self.progress.send_replace(SaveProgress {
                saved,
                error: result.err().map(|error| error.to_string()),
            });
        }
    }
}

/// Owns the saver thread: the last registry clone to go waits for the last
/// save.
#[derive(Debug)]
struct SaverHandle {
    shared: Arc<Saver>,
    thread: Option<JoinHandle<()>>,
}

impl SaverHandle {
    fn start(file: PathBuf, state: Arc<Mutex<Devices>>) -> io::Result<SaverHandle> {
        let shared = Arc::new(Saver {
            file,
            wanted: Mutex::default(),
            wake: Condvar::new(),
            progress: watch::Sender::new(SaveProgress::default()),
            writes: std::sync::atomic::AtomicU64::new(0),
            #[cfg(test)]
            stall: Mutex::default(),
        });
        let thread = std::thread::Builder::new()
            .name("device-registry".into())
            .spawn({
                let shared = Arc::clone(&shared);
                move || shared.run(&state)
            })?;
        Ok(SaverHandle {
            shared,
            thread: Some(thread),
        })
    }
}

impl Drop for SaverHandle {
    fn drop(&mut self) {
        self.shared
            .wanted
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .closing = true;
        self.shared.wake.notify_one();
        let Some(thread) = self.thread.take() else {
            return;
        };
        // The last save must reach the disk before the registry is gone (a
        // process exiting next would lose it), and may take an fsync: a
        // multi-threaded runtime's worker hands its other tasks on while it
        // waits. (A task spawned to wait would never run in a runtime that
        // is shutting down; a current-thread runtime cannot hand on, and
        // waits. A thread inside a current-thread runtime that entered a
        // multi-threaded one's handle is not supported: block_in_place
        // refuses it.)
        let on_multi_thread_runtime = tokio::runtime::Handle::try_current()
            .is_ok_and(|runtime| runtime.runtime_flavor() == RuntimeFlavor::MultiThread);
        if on_multi_thread_runtime {
            drop(tokio::task::block_in_place(move || thread.join()));
        } else {
            drop(thread.join());
        }
    }
}

/// `text`, or its first `max` characters and an ellipsis if it is longer:
/// what a client describes itself with is shown, not stored in full.
pub(crate) fn cut_at_chars(text: &str, max: usize) -> String {
    match text.char_indices().nth(max) {
        Some((end, _)) => format!("{}…", &text[..end]),
        None => text.to_owned(),
    }
}

fn save(path: &Path, devices: &BTreeMap<String, Device>) -> io::Result<()> {
    /// What [`Devices`] is on disk.
    #[derive(Serialize)]
    struct DevicesFile<'a> {
        devices: &'a BTreeMap<String, Device>,
    }
    let bytes = serde_json::to_vec_pretty(&DevicesFile { devices }).map_err(io::Error::other)?;
    crate::files::replace(path, &bytes, 0o600)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_new_device_is_pending_until_approved_and_can_be_revoked() {
        let registry = DeviceRegistry::in_memory();
        let Err(DeviceError::NotApproved { code }) = registry.check("SHA256:a", "linux") else {
            panic!("a new device must not be approved");
        };
        assert_eq!(code.len(), 8);
        // Asking again gives the same code.
        assert_eq!(
            registry.check("SHA256:a", "linux"),
            Err(DeviceError::NotApproved { code: code.clone() })
        );
        assert!(!registry.approve("WRONGCOD"));
        assert!(registry.approve(&code.to_lowercase()));
        assert_eq!(registry.check("SHA256:a", "linux"), Ok(()));
        assert!(registry.revoke("SHA256:a"));
        assert_eq!(
            registry.check("SHA256:a", "linux"),
            Err(DeviceError::Revoked)
        );
        assert!(!registry.revoke("SHA256:unknown"));
    }

    #[test]
    fn a_persisted_registry_survives_a_restart_and_rejects_corruption() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("devices.json");
        let registry = DeviceRegistry::load_or_create(&path).unwrap();
        let Err(DeviceError::NotApproved { code }) = registry.check("SHA256:b", "mac") else {
            panic!("pending expected");
        };
        registry.approve(&code);
        // The last clone to go waits for the last save.
        drop(registry);
        let again = DeviceRegistry::load_or_create(&path).unwrap();
        assert_eq!(again.status("SHA256:b"), Some(DeviceStatus::Approved));
        std::fs::write(&path, "{ not json").unwrap();
        assert!(DeviceRegistry::load_or_create(&path).is_err());
    }

    /// Drops the last clone of a registry inside a task of `runtime` while
    /// its last save waits for a slow disk; says whether that save was on
    /// disk once the drop returned.
    fn last_save_on_disk_after_a_drop_in(runtime: &tokio::runtime::Runtime) -> bool {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("devices.json");
        let registry = DeviceRegistry::load_or_create(&path).unwrap();
        let saver = Arc::clone(&registry.saver.as_ref().unwrap().shared);
        let (locked, disk_is_slow) = std::sync::mpsc::channel();
        let (dropping, wait_for_drop) = std::sync::mpsc::channel::<()>();
        let disk = std::thread::spawn(move || {
            let stall = saver.stall.lock().unwrap();
            locked.send(()).unwrap();
            let _ = wait_for_drop.recv();
            drop(stall);
        });
        disk_is_slow.recv().unwrap();
        let Err(DeviceError::NotApproved { code }) = registry.check("SHA256:d", "linux") else {
            panic!("pending expected");
        };
        assert!(registry.approve(&code));
        runtime.block_on(async move {
            tokio::spawn(async move {
                dropping.send(()).unwrap();
                drop(registry);
            })
            .await
            .unwrap();
        });
        let on_disk = DeviceRegistry::load_or_create(&path)
            .unwrap()
            .status("SHA256:d")
            == Some(DeviceStatus::Approved);
        disk.join().unwrap();
        on_disk
    }

    /// A task spawned to wait for the last save never runs in a runtime
    /// that is shutting down, and a process exiting next loses the save:
    /// the drop itself waits, on either kind of runtime.
    #[test]
    fn dropping_the_registry_in_a_runtime_waits_for_its_last_save() {
        for _ in 0..20 {
            let multi_thread = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .build()
                .unwrap();
            assert!(last_save_on_disk_after_a_drop_in(&multi_thread));
            let current_thread = tokio::runtime::Builder::new_current_thread()
                .build()
                .unwrap();
            assert!(last_save_on_disk_after_a_drop_in(&current_thread));
        }
    }

    #[tokio::test]
    async fn changes_made_while_a_save_runs_go_to_disk_together() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("devices.json");
        let registry = DeviceRegistry::load_or_create(&path).unwrap();
        let saver = Arc::clone(&registry.saver.as_ref().unwrap().shared);
        // A disk that takes its time: the saver waits here.
        let stall = saver.stall.lock().unwrap();
        let (done, finished) = std::sync::mpsc::channel();
        std::thread::spawn({
            let registry = registry.clone();
            move || {
                for index in 0..200 {
                    let _ = registry.check(&format!("SHA256:{index:03}"), "linux");
                }
                done.send(()).unwrap();
            }
        });
        // New keys do not wait for the disk (a runtime thread would).
        finished
            .recv_timeout(Duration::from_secs(30))
            .expect("checks of new devices waited for the stalled save");
        drop(stall);
        registry.saved().await.unwrap();
        let writes = saver.writes.load(std::sync::atomic::Ordering::Relaxed);
        assert!(
            (1..=2).contains(&writes),
            "200 new devices made {writes} writes of the file"
        );
        let again = DeviceRegistry::load_or_create(&path).unwrap();
        assert_eq!(again.list().len(), 200);
        // Nothing changed, nothing written: wrong codes posted in a loop.
        for _ in 0..10 {
            assert!(!registry.approve("WRONGCOD"));
        }
        registry.saved().await.unwrap();
        assert_eq!(
            saver.writes.load(std::sync::atomic::Ordering::Relaxed),
            writes
        );
        // Nor a revocation posted again.
        assert!(registry.revoke("SHA256:007"));
        registry.saved().await.unwrap();
        for _ in 0..10 {
            assert!(registry.revoke("SHA256:007"));
        }
        registry.saved().await.unwrap();
        assert_eq!(
            saver.writes.load(std::sync::atomic::Ordering::Relaxed),
            writes + 1
        );
    }

    #[test]
    fn waiting_commands_wake_for_approvals_not_for_every_new_key() {
        use futures_util::FutureExt;
        let registry = DeviceRegistry::in_memory();
        let Err(DeviceError::NotApproved { code }) = registry.check("SHA256:w", "linux") else {
            panic!("pending expected");
        };
        let mut woken = std::pin::pin!(registry.changed.notified());
        woken.as_mut().enable();
        // Other clients' new keys: nothing for this waiter.
        for index in 0..10 {
            let _ = registry.check(&format!("SHA256:new{index}"), "linux");
        }
        assert!(
            woken.as_mut().now_or_never().is_none(),
            "woken by a new key"
        );
        let mut woken = std::pin::pin!(registry.changed.notified());
        woken.as_mut().enable();
        assert!(registry.approve(&code));
        assert!(
            woken.as_mut().now_or_never().is_some(),
            "not woken by its approval"
        );
    }

    #[tokio::test]
    async fn saved_reports_a_failed_save_until_one_succeeds() {
        let dir = tempfile::tempdir().unwrap();
        let folder = dir.path().join("state");
        let path = folder.join("devices.json");
        let registry = DeviceRegistry::load_or_create(&path).unwrap();
        // A file where the folder should be: no save can succeed.
        std::fs::write(&folder, "in the way").unwrap();
        let _ = registry.check("SHA256:a", "linux");
        let error = registry.saved().await.unwrap_err().to_string();
        assert!(
            error.contains("cannot save the device registry") && error.contains("devices.json"),
            "{error}"
        );
        std::fs::remove_file(&folder).unwrap();
        assert!(registry.revoke("SHA256:a"));
        registry.saved().await.unwrap();
        let again = DeviceRegistry::load_or_create(&path).unwrap();
        assert_eq!(again.status("SHA256:a"), Some(DeviceStatus::Revoked));
    }

    /// A label keeps no character that would reorder or hide what the
    /// devices page shows around it (a client could make its label read as
    /// another device's), also one saved before labels were cleaned.
    #[test]
    fn labels_keep_no_bidi_control_or_invisible_characters() {
        let said =
            "linux \u{202e}46_68x\u{202c} \u{200b}x\u{1b}[2J\n, \u{2066}client\u{2069}\u{feff} 1";
        let registry = DeviceRegistry::in_memory();
        let _ = registry.check("SHA256:a", said);
        let devices = registry.list();
        assert_eq!(devices[0].label, "linux 46_68x x[2J, client 1");

        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("devices.json");
        let saved = serde_json::json!({"devices": {"SHA256:b": {
            "fingerprint": "SHA256:b", "label": said, "status": "approved"
        }}});
        std::fs::write(&path, saved.to_string()).unwrap();
        let registry = DeviceRegistry::load_or_create(&path).unwrap();
        assert_eq!(registry.list()[0].label, "linux 46_68x x[2J, client 1");
    }

    #[test]
    fn new_keys_in_a_loop_keep_only_the_newest_pending_devices() {
        let registry = DeviceRegistry::in_memory();
        let _ = registry.check("SHA256:approved", "linux");
        let code = match registry.status("SHA256:approved") {
            Some(DeviceStatus::Pending { code }) => code,
            other => panic!("{other:?}"),
        };
        assert!(registry.approve(&code));
        let long_label = "x".repeat(100_000);
        for index in 0..MAX_PENDING + 10 {
            let _ = registry.check(&format!("SHA256:{index:06}"), &long_label);
        }
        let devices = registry.list();
        assert_eq!(
            devices.len(),
            MAX_PENDING + 1,
            "the pending ones and the approved one"
        );
        assert_eq!(
            registry.status("SHA256:approved"),
            Some(DeviceStatus::Approved)
        );
        // The oldest went first; the newest is there.
        assert_eq!(registry.status("SHA256:000000"), None);
        assert_eq!(registry.status("SHA256:000009"), None);
        assert!(registry.status("SHA256:000010").is_some());
        assert!(
            registry
                .status(&format!("SHA256:{:06}", MAX_PENDING + 9))
                .is_some()
        );
        assert!(
            devices
                .iter()
                .all(|device| device.label.chars().count() <= MAX_LABEL_CHARS + 1)
        );
        // A forgotten device that waits for approval is told so, and not
        // added again (which would push out the next one, and so on).
        assert_eq!(
            registry.waiting("SHA256:000000"),
            Err(DeviceError::Forgotten)
        );
        assert_eq!(registry.list().len(), MAX_PENDING + 1);
        assert!(matches!(
            registry.waiting("SHA256:000010"),
            Err(DeviceError::NotApproved { .. })
        ));
        assert_eq!(registry.waiting("SHA256:approved"), Ok(()));
    }
}
