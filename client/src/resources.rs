//! The client's resources: files, directories, environment variables and
//! the browser, each request checked against the authority's entitlements
//! before anything is touched.
//!
//! Order for a path: the policy crate resolves it (`~`, relative to the
//! user's home, `.`/`..`, symlinks of the existing part) and decides on the
//! resolved path; [`safe_fs`] then performs the operation on
//! that path without following any symlink, so one planted after the check
//! is refused rather than followed. Denials carry the command that would
//! allow them.

#![allow(
    clippy::result_large_err,
    reason = "OpError is the wire answer itself; errors are the cold path"
)]

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use terminalwire_policy::decide::{Allowed, Denial as PolicyDenial};
use terminalwire_policy::grant::Action;
use terminalwire_policy::{Entitlements, ResolvedPath, Sighting};
use terminalwire_protocol::frame::Denial;
use terminalwire_protocol::frame::{
    DirEntry, EntryKind, ErrorCode, Metadata, OpError, Operation, Reply,
};

use crate::audit::{AuditLog, Record};
use crate::consent::Consent;
use crate::progress::Progress;
use crate::quota::{Charge, StorageQuota};
use crate::safe_fs::{self, FsError, Kind, StreamedWrite};

/// Largest `file_read` answer, so that a response frame stays well under the
/// protocol's frame limit.
pub const MAX_READ: u32 = 768 * 1024;
/// Most entries a `dir_list` returns.
pub const MAX_ENTRIES: usize = 10_000;
/// Most bytes the names of a `dir_list` answer may take, counting
/// [`LISTED_ENTRY_OVERHEAD`] for each: the answer stays under the frame limit
/// (10 000 names of 255 bytes would not).
pub const MAX_LISTING_BYTES: usize = 768 * 1024;
/// What an entry of a `dir_list` answer takes besides its name (its kind, the
/// field names and lengths), rounded up.
pub const LISTED_ENTRY_OVERHEAD: usize = 32;

/// Opens URLs for `browser_open`.
pub type Opener = Arc<dyn Fn(&str) -> std::io::Result<()> + Send + Sync>;

/// Streamed writes a server may have open at once.
pub const MAX_OPEN_WRITES: usize = 16;

/// What the client may do for one session's server.
#[derive(Clone)]
pub struct Resources {
    entitlements: Arc<std::sync::RwLock<Option<Arc<Entitlements>>>>,
    consent: Option<Arc<Consent>>,
    home_root: Option<PathBuf>,
    opener: Opener,
    writes: Arc<Mutex<Writes>>,
    progress: Progress,
    audit: Option<Audit>,
    /// What the authority's storage folder may still take; `None` without
    /// a storage folder.
    quota: Option<Arc<StorageQuota>>,
    /// When this session's recent browser launches were (at most
    /// [`BROWSER_LAUNCHES`] a minute).
    browser_launches: Arc<Mutex<std::collections::VecDeque<std::time::Instant>>>,
    /// Recursive deletes running at once: each walk holds the names it
    /// found (up to 100 000), and a server may have 64 requests in flight.
    recursive_deletes: Arc<tokio::sync::Semaphore>,
}

/// Browser launches a session may make in a minute. The server's own pages
/// open without asking (a login, a receipt), but not one tab after another.
const BROWSER_LAUNCHES: usize = 4;

/// Recursive deletes a session runs at once; the others wait their turn.
const RECURSIVE_DELETES: usize = 2;

/// The audit log, written by its own thread: a request is answered without
/// waiting for its line (a thread hop and a file append per request were
/// most of a small request's cost). [`Resources::end_session`] waits until
/// every line is written. The thread starts with the first record: a
/// command that asks for no resource does not pay for it.
#[derive(Clone)]
struct Audit {
    log: AuditLog,
    /// How long the writer thread gathers records before a write.
    gather: std::time::Duration,
    /// The writer thread; `None` inside when it could not start.
    writer: Arc<OnceLock<Option<AuditWriter>>>,
    /// Set by the writer thread as it starts to gather, for tests.
    #[cfg(test)]
    gathering: Arc<std::sync::atomic::AtomicBool>,
}

/// The audit thread's queue, and the thread, to wake it for a flush.
struct AuditWriter {
    queue: std::sync::mpsc::SyncSender<AuditMessage>,
    thread: std::thread::Thread,
}

enum AuditMessage {
    Record(Record),
    /// Answered once every earlier record is written.
    Flush(std::sync::mpsc::SyncSender<()>),
}

/// The audit decision of an operation that was performed.
const ALLOWED: std::borrow::Cow<'static, str> = std::borrow::Cow::Borrowed("allowed");

/// Records queued for the audit thread before requests wait for it.
const AUDIT_QUEUE: usize = 4096;
/// Most records the audit thread appends with one write.
const AUDIT_BATCH: usize = 256;
/// How long the audit thread gathers records before writing them.
const AUDIT_GATHER: std::time::Duration = std::time::Duration::from_millis(2);
/// How long the end of a session waits for the audit log to be written.
const AUDIT_FLUSH_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

impl Audit {
    fn new(log: AuditLog) -> Self {
        Audit {
            log,
            gather: AUDIT_GATHER,
            writer: Arc::default(),
            #[cfg(test)]
            gathering: Arc::default(),
        }
    }

    fn queue(&self) -> Option<&std::sync::mpsc::SyncSender<AuditMessage>> {
        self.writer
            .get_or_init(|| self.start())
            .as_ref()
            .map(|writer| &writer.queue)
    }

    fn start(&self) -> Option<AuditWriter> {
        let (writer, gather) = (self.log.clone(), self.gather);
        #[cfg(test)]
        let gathering = self.gathering.clone();
        let (queue, messages) = std::sync::mpsc::sync_channel(AUDIT_QUEUE);
        let spawned = std::thread::Builder::new()
            .name("terminalwire-audit".into())
            .spawn(move || {
                // Ends when every `Resources` clone (every sender) is gone.
                let mut batch = Vec::with_capacity(AUDIT_BATCH);
                let mut flushes = Vec::new();
                while let Ok(first) = messages.recv() {
                    match first {
                        AuditMessage::Record(record) => batch.push(record),
                        AuditMessage::Flush(done) => flushes.push(done),
                    }
                    drain_audit(&messages, &mut batch, &mut flushes);
                    // Few records waiting: those of the next moments go out
                    // in the same write, and a parked thread is not woken
                    // by each of them (a busy session wakes it a few hundred
                    // times a second, not once per request). A flush wakes
                    // it (`unpark`): the end of a session does not wait.
                    if flushes.is_empty() && batch.len() < AUDIT_BATCH / 8 {
                        #[cfg(test)]
                        gathering.store(true, Ordering::SeqCst);
                        std::thread::park_timeout(gather);
                        drain_audit(&messages, &mut batch, &mut flushes);
                    }
                    writer.record_all(&batch);
                    batch.clear();
                    for done in flushes.drain(..) {
                        let _ = done.send(());
                    }
                }
            });
        match spawned {
            Ok(handle) => Some(AuditWriter {
                queue,
                thread: handle.thread().clone(),
            }),
            Err(error) => {
                // Without the thread, records are written inline.
                tracing::warn!(%error, "cannot start the audit log writer");
                None
            }
        }
    }

    fn record(&self, record: Record) {
        // A full queue holds the request back (bounded memory); a missing
        // writer thread means writing here.
        let record = match self.queue() {
            Some(queue) => match queue.send(AuditMessage::Record(record)) {
                Ok(()) => return,
                Err(std::sync::mpsc::SendError(AuditMessage::Record(record))) => record,
                Err(_) => return,
            },
            None => record,
        };
        self.log.record_all(&[record]);
    }

    fn flush(&self) {
        // Never started: nothing to write.
        let Some(Some(writer)) = self.writer.get() else {
            return;
        };
        let (done, finished) = std::sync::mpsc::sync_channel(1);
        if writer.queue.send(AuditMessage::Flush(done)).is_ok() {
            writer.thread.unpark();
            let _ = finished.recv_timeout(AUDIT_FLUSH_TIMEOUT);
        }
    }
}

/// Whether an audited action reads or changes the user's files,
/// environment or browser (rather than looking whether something is there).
fn reads_or_changes(action: &str) -> bool {
    matches!(
        action,
        "file_read"
            | "file_write"
            | "file_append"
            | "file_delete"
            | "file_write_open"
            | "file_write_commit"
            | "chmod"
            | "dir_list"
            | "dir_create"
            | "dir_delete"
            | "dir_delete_recursive"
            | "env_get"
            | "browser_open"
    )
}

/// Whether the policy refused the request (it touched nothing).
fn is_denial(result: &Result<Reply, OpError>) -> bool {
    matches!(result, Err(error) if error.code == ErrorCode::Denied)
}

/// Operations [`Resources::perform`] does on the calling thread, without
/// waiting for anything unless the user must be asked: a few system calls
/// each.
fn performed_inline(op: &Operation) -> bool {
    matches!(
        op,
        Operation::FileExists { .. }
            | Operation::DirExists { .. }
            | Operation::Metadata { .. }
            | Operation::EnvGet { .. }
    )
}

/// In debug builds only, for the end-to-end tests: holds the session's
/// thread in each stat-class request for `TERMINALWIRE_DEBUG_HOLD_INLINE_MS`
/// milliseconds, as a stat on a hung network mount does, after saying so on
/// stderr.
#[cfg(debug_assertions)]
fn debug_hold_inline() {
    static HOLD: std::sync::OnceLock<Option<std::time::Duration>> = std::sync::OnceLock::new();
    let hold = HOLD.get_or_init(|| {
        std::env::var("TERMINALWIRE_DEBUG_HOLD_INLINE_MS")
            .ok()
            .and_then(|ms| ms.parse().ok())
            .map(std::time::Duration::from_millis)
    });
    if let Some(hold) = *hold {
        eprintln!("terminalwire: debug: holding a stat-class request for {hold:?}");
        std::thread::sleep(hold);
    }
}

/// In debug builds only, for the end-to-end tests: panics in a request
/// about the path `TERMINALWIRE_DEBUG_PANIC_ON_PATH` (as the server spelled
/// it), as a bug in a resource handler would.
#[cfg(debug_assertions)]
fn debug_panic_on_path(path: Option<&str>) {
    static PANIC_ON: std::sync::OnceLock<Option<String>> = std::sync::OnceLock::new();
    let panic_on = PANIC_ON.get_or_init(|| std::env::var("TERMINALWIRE_DEBUG_PANIC_ON_PATH").ok());
    if let (Some(panic_on), Some(path)) = (panic_on, path)
        && panic_on == path
    {
        panic!("debug: a request about {path} panics (TERMINALWIRE_DEBUG_PANIC_ON_PATH)");
    }
}

fn too_many_writes() -> OpError {
    OpError::new(
        ErrorCode::TooLarge,
        format!("more than {MAX_OPEN_WRITES} streamed writes open at once"),
    )
}

/// Moves what is queued into `batch` and `flushes`, up to [`AUDIT_BATCH`]
/// records, without waiting.
fn drain_audit(
    messages: &std::sync::mpsc::Receiver<AuditMessage>,
    batch: &mut Vec<Record>,
    flushes: &mut Vec<std::sync::mpsc::SyncSender<()>>,
) {
    while batch.len() < AUDIT_BATCH {
        match messages.try_recv() {
            Ok(AuditMessage::Record(record)) => batch.push(record),
            Ok(AuditMessage::Flush(done)) => flushes.push(done),
            Err(_) => break,
        }
    }
}

/// Open streamed writes by handle.
#[derive(Debug, Default)]
struct Writes {
    next: u64,
    open: HashMap<u64, Arc<OpenWrite>>,
    /// The session ended: an open still running on its thread then makes
    /// no file (it would outlive the end's clean-up).
    ended: bool,
}

#[derive(Debug)]
struct OpenWrite {
    write: StreamedWrite,
    path: PathBuf,
    written: AtomicU64,
    /// Its chunks are charged to the storage quota.
    in_storage: bool,
    /// How far into the file chunks were charged: a chunk is charged for
    /// what it extends the file past this.
    charged_to: Mutex<u64>,
}

impl std::fmt::Debug for Resources {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Resources")
            .field(
                "authority",
                &self.entitlements().ok().map(|e| e.authority().to_string()),
            )
            .finish_non_exhaustive()
    }
}

impl Resources {
    /// Resources governed by `entitlements`; `home_root` is the terminalwire
    /// home (the value of `TERMINALWIRE_HOME` the server may read).
    pub fn new(entitlements: Entitlements, home_root: PathBuf, opener: Opener) -> Self {
        let quota = entitlements.storage_dir().map(|storage| {
            Arc::new(StorageQuota::new(
                storage.to_path_buf(),
                entitlements.storage_quota(),
            ))
        });
        Resources {
            quota,
            entitlements: Arc::new(std::sync::RwLock::new(Some(Arc::new(entitlements)))),
            consent: None,
            home_root: Some(home_root),
            opener,
            writes: Arc::default(),
            progress: Progress::disabled(),
            audit: None,
            browser_launches: Arc::default(),
            recursive_deletes: Arc::new(tokio::sync::Semaphore::new(RECURSIVE_DELETES)),
        }
    }

    /// Asks the user about grantable denials (see [`Consent`]).
    pub fn with_consent(mut self, consent: Consent) -> Self {
        self.progress = self.progress.with_screen(Some(consent.gate.clone()));
        consent.show_progress(self.progress.clone());
        self.consent = Some(Arc::new(consent));
        self
    }

    /// The lock a consent prompt holds while it is on screen; output
    /// writers take it for each write.
    pub fn output_gate(&self) -> Option<Arc<tokio::sync::RwLock<()>>> {
        self.consent.as_ref().map(|consent| consent.gate.clone())
    }

    /// Appends every request and its outcome to `log`.
    pub fn with_audit(mut self, log: AuditLog) -> Self {
        self.audit = Some(Audit::new(log));
        self
    }

    /// A session begins: names it in the audit log, and lets streamed
    /// writes begin again should an earlier session have ended on these
    /// resources.
    pub fn set_session(&self, session: &str) {
        self.writes
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .ended = false;
        if let Some(audit) = &self.audit {
            audit.log.set_session(session);
        }
    }

    /// Shows progress bars for long transfers (when stderr is a terminal).
    pub fn with_progress(mut self, progress: Progress) -> Self {
        self.progress = progress.with_screen(self.output_gate());
        if let Some(consent) = &self.consent {
            consent.show_progress(self.progress.clone());
        }
        self
    }

    /// Drops every unfinished streamed write (their temporary files are
    /// deleted) and clears progress bars: the session is over.
    pub fn end_session(&self) {
        // Poisoned (a panic, which ends the session, while it was held):
        // the clean-up is needed all the more.
        {
            let mut writes = self
                .writes
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            writes.ended = true;
            // A chunk still being written holds its write: the unfinished
            // file goes now, not when that thread lets go (the process may
            // have exited by then).
            for (_, open) in writes.open.drain() {
                open.write.discard();
            }
        }
        self.progress.clear();
        if let Some(audit) = &self.audit {
            audit.flush();
            audit.log.finish();
        }
    }

    /// No resources at all: every file, env and browser request is refused.
    pub fn none() -> Self {
        Resources {
            entitlements: Arc::default(),
            consent: None,
            home_root: None,
            opener: Arc::new(|_| Err(std::io::Error::other("no browser"))),
            writes: Arc::default(),
            progress: Progress::disabled(),
            audit: None,
            quota: None,
            browser_launches: Arc::default(),
            recursive_deletes: Arc::new(tokio::sync::Semaphore::new(RECURSIVE_DELETES)),
        }
    }

    /// The default opener: `$TERMINALWIRE_BROWSER URL` when that is set
    /// (a program, run without a shell), else the desktop's opener.
    pub fn system_opener() -> Opener {
        Arc::new(|url: &str| match std::env::var_os("TERMINALWIRE_BROWSER") {
            Some(program) if !program.is_empty() => {
                // Its value is not the server's to read: only its name is said.
                let named = "the program in TERMINALWIRE_BROWSER";
                let status = std::process::Command::new(&program)
                    .arg(url)
                    .stdin(std::process::Stdio::null())
                    .stdout(std::process::Stdio::null())
                    .status()
                    .map_err(|error| {
                        std::io::Error::new(error.kind(), format!("{named} cannot be run: {error}"))
                    })?;
                if status.success() {
                    Ok(())
                } else {
                    Err(std::io::Error::other(format!("{named} failed ({status})")))
                }
            }
            _ => open::that_detached(url).map_err(|error| {
                // The opener's own words are a debug dump of a command line
                // and a wait status: logged, and said plainly.
                tracing::info!(%error, "the desktop's URL opener failed");
                std::io::Error::new(
                    error.kind(),
                    "no browser could be started here (set TERMINALWIRE_BROWSER to a program \
                     that opens a URL)",
                )
            }),
        })
    }

    /// Performs a resource operation. `None` for operations that are not
    /// resources (stdin is the session's).
    pub async fn perform(&self, op: Operation) -> Option<Result<Reply, OpError>> {
        let (described, touched) = self.describe(&op);
        let named = op.path().map(str::to_owned);
        let retry = self.consent.as_ref().map(|_| op.clone());
        // What a request that reads or changes the user's data touched is
        // logged resolved (its path as the server spelled it can hide
        // that): resolved on the operation's own blocking thread, right
        // after it (a thread of its own for each would grow the pool, and
        // the client's memory, under a stream of chunks).
        let audited = match (&touched, described.as_ref()) {
            (Some(path), Some((_, action, ..))) if reads_or_changes(action) => Some(path.clone()),
            _ => None,
        };
        let (mut result, mut resolved) = self.perform_unaudited(op, audited.clone()).await?;
        // A grantable denial, on a terminal: the client asks the user.
        let asked = match (&self.consent, &result) {
            (
                Some(consent),
                Err(OpError {
                    denial: Some(denial),
                    ..
                }),
            ) => consent.ask(denial).await,
            _ => crate::consent::Outcome::Unchanged,
        };
        // Why, when the prompt denied it: the app is told, and the audit
        // log says, not that nobody granted it.
        let prompt_denied = match &asked {
            crate::consent::Outcome::DeniedByUser { earlier: true } => Some((
                crate::consent::DENIED_BY_USER_BEFORE.to_owned(),
                crate::audit::PROMPT_REFUSED,
            )),
            crate::consent::Outcome::DeniedByUser { earlier: false } => Some((
                crate::consent::DENIED_BY_USER.to_owned(),
                crate::audit::PROMPT_REFUSED,
            )),
            crate::consent::Outcome::NotAnswered { waited } => Some((
                crate::consent::not_answered(*waited),
                crate::audit::PROMPT_UNANSWERED,
            )),
            _ => None,
        };
        if let (crate::consent::Outcome::Allowed(answer, updated), Some(op)) = (asked, retry) {
            (result, resolved) = if answer == crate::consent::Answer::Once {
                // Once means this request: it runs with rules of its own.
                // Swapped into the session's for the retry, they allowed
                // every request made meanwhile, and two overlapping retries
                // put back each other's rules, keeping one grant for good.
                let mut once = self.clone();
                once.entitlements = Arc::new(std::sync::RwLock::new(Some(updated)));
                once.perform_unaudited(op, audited).await?
            } else {
                *self
                    .entitlements
                    .write()
                    .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(updated);
                self.perform_unaudited(op, audited).await?
            };
        }
        if is_denial(&result) {
            resolved = None;
        }
        let prompt = prompt_denied
            .as_ref()
            .filter(|_| is_denial(&result))
            .map(|(_, prompt)| *prompt);
        self.audit(described, resolved, &result, prompt);
        // The user said no, or did not answer: the app is told so
        // (whatever it is told of the path), not that nobody granted it.
        let mut told = self.as_told(named.as_deref(), result);
        if let (Some((reason, _)), Err(error)) = (prompt_denied, &mut told) {
            denied_at_the_prompt(error, reason, &self.authority_name());
        }
        Some(told)
    }

    /// Performs a stat-class operation ([`performed_inline`]) here and now,
    /// audited like [`perform`](Self::perform), without a future: no
    /// allocation for a state machine, no task. Hands the operation back
    /// (`Err`) when it is not stat-class, or when its answer is a denial the
    /// user could be asked to grant: [`perform`](Self::perform) waits for
    /// that answer.
    pub(crate) fn perform_now(&self, op: Operation) -> Result<Result<Reply, OpError>, Operation> {
        if !performed_inline(&op) {
            return Err(op);
        }
        #[cfg(debug_assertions)]
        debug_hold_inline();
        // Only a client that can ask needs the operation again.
        let retry = self.consent.as_ref().map(|_| op.clone());
        // Stat-class: nothing resolved again for the log (none reads or
        // changes the user's data but `env_get`, which has no path).
        let described = describe(&op);
        let named = op.path().map(str::to_owned);
        let result = match op {
            Operation::EnvGet { name } => self.env_get(&name),
            op => self.path_op(op),
        };
        if let (
            Some(op),
            Err(OpError {
                denial: Some(_), ..
            }),
        ) = (retry, &result)
        {
            return Err(op);
        }
        self.audit(described, None, &result, None);
        Ok(self.as_told(named.as_deref(), result))
    }

    /// The result as the server is told it. A path denial names what the
    /// path resolved to, which a symlink can put anywhere (`/proc/self/cwd`
    /// is the user's working folder): when that is not the path the server
    /// named, it learns only that its path is not granted, not where it
    /// leads nor why. The user's prompt and the audit log keep the whole
    /// denial.
    fn as_told(
        &self,
        named: Option<&str>,
        result: Result<Reply, OpError>,
    ) -> Result<Reply, OpError> {
        let Err(mut error) = result else {
            return result;
        };
        if let (Some(named), Some(denial)) = (named, error.denial.as_mut())
            && denial.resource == "path"
        {
            let as_named = self.entitlements().is_ok_and(|entitlements| {
                entitlements.resolves_as_named(named, std::path::Path::new(&denial.target))
            });
            if !as_named {
                denial.target = named.to_owned();
                denial.reason = terminalwire_policy::decide::DenialReason::NotGranted.to_string();
                denial.command = None;
                error.message = denial_message(&self.authority_name(), denial);
            }
        }
        Err(error)
    }

    /// Records what an operation did in the audit log, when there is one.
    /// `resolved` is the path a request that reads or changes the user's
    /// data touched, and whether that is in the server's own storage;
    /// `prompt`, what the consent prompt made of a denial it asked about
    /// ([`Record::prompt`]).
    fn audit(
        &self,
        described: Option<Described>,
        resolved: Option<(PathBuf, bool)>,
        result: &Result<Reply, OpError>,
        prompt: Option<&'static str>,
    ) {
        let (Some(audit), Some((resource, action, target, sent))) = (&self.audit, described) else {
            return;
        };
        let (decision, bytes) = match result {
            Ok(Reply::Data { bytes, .. }) => (ALLOWED, Some(bytes.len() as u64)),
            Ok(_) => (ALLOWED, sent),
            Err(error) => (std::borrow::Cow::Owned(error.code.to_string()), None),
        };
        // Allowed or failed part-way (a recursive delete may fail at its
        // last folder, everything in it gone): what it touched counts.
        let significant = reads_or_changes(action)
            && !is_denial(result)
            && !resolved.as_ref().is_some_and(|(_, in_storage)| *in_storage);
        // Logged as resolved: that is the file, however it was spelled.
        let (target, same_as) = match &resolved {
            Some((path, _)) => {
                let mut text = path.to_string_lossy().into_owned();
                // A mode change says which mode (and another mode is not a
                // repeat).
                if action == "chmod"
                    && let Some(mode) = target.rfind(" (").map(|at| &target[at..])
                {
                    text.push_str(mode);
                }
                let identity = AuditLog::identity(action, &text);
                (audited_target(&text), Some(identity))
            }
            None => {
                let same_as = significant.then(|| AuditLog::identity(action, &target));
                (target, same_as)
            }
        };
        audit.record(Record {
            time: std::time::SystemTime::now(),
            resource,
            action,
            target,
            decision,
            bytes,
            significant,
            same_as,
            prompt,
        });
    }

    /// The path `named` resolves to, and whether it is in the server's own
    /// storage; `None` when it does not resolve.
    fn resolve_for_audit(&self, named: &str) -> Option<(PathBuf, bool)> {
        let entitlements = self.entitlements().ok()?;
        let resolved = entitlements.resolve(named).ok()?;
        let in_storage = entitlements
            .storage_dir()
            .is_some_and(|storage| resolved.as_path().starts_with(storage));
        Some((resolved.as_path().to_path_buf(), in_storage))
    }

    /// What the audit log says about `op`, and the path it touches, if
    /// any: a streamed write's commit and abort name the file of their
    /// handle (the commit is what replaces it).
    fn describe(&self, op: &Operation) -> (Option<Described>, Option<String>) {
        let handle = match op {
            Operation::FileWriteCommit { handle } | Operation::FileWriteAbort { handle } => {
                Some(*handle)
            }
            _ => None,
        };
        let described = describe(op);
        let Some(handle) = handle else {
            return (described, op.path().map(str::to_owned));
        };
        let path = self.writes().ok().and_then(|writes| {
            writes
                .open
                .get(&handle)
                .map(|open| open.path.to_string_lossy().into_owned())
        });
        let described = described.map(|(resource, action, target, bytes)| {
            let target = path.as_deref().map_or(target, audited_target);
            (resource, action, target, bytes)
        });
        (described, path)
    }

    /// Performs `op`; also resolves `audited` for the audit log
    /// ([`resolve_for_audit`](Self::resolve_for_audit)) on the same blocking
    /// thread when the operation runs on one and was not denied.
    async fn perform_unaudited(
        &self,
        op: Operation,
        audited: Option<String>,
    ) -> Option<(Result<Reply, OpError>, Option<(PathBuf, bool)>)> {
        Some(match op {
            Operation::EnvGet { name } => (self.env_get(&name), None),
            Operation::BrowserOpen { url } => {
                let this = self.clone();
                (blocking(move || this.browser_open(&url)).await, None)
            }
            // A few system calls each: a hop to a blocking thread and back
            // would cost more than the work. (None reads or changes the
            // user's data: nothing to resolve for the log.)
            op if performed_inline(&op) => (self.path_op(op), None),
            Operation::FileRead { .. }
            | Operation::FileWrite { .. }
            | Operation::FileAppend { .. }
            | Operation::FileDelete { .. }
            | Operation::Chmod { .. }
            | Operation::DirList { .. }
            | Operation::DirCreate { .. }
            | Operation::DirDelete { .. }
            | Operation::FileWriteOpen { .. }
            | Operation::FileWriteChunk { .. }
            | Operation::FileWriteCommit { .. }
            | Operation::FileWriteAbort { .. } => {
                let _turn = match &op {
                    Operation::DirDelete {
                        recursive: true, ..
                    } => self.recursive_deletes.clone().acquire_owned().await.ok(),
                    _ => None,
                };
                // Made here, on the session's thread, not on the blocking
                // one: see `safe_fs::read_into`.
                let read_buffer = match &op {
                    Operation::FileRead { len, .. } => {
                        Vec::with_capacity((*len).min(MAX_READ) as usize)
                    }
                    _ => Vec::new(),
                };
                let this = self.clone();
                let work = move || {
                    let result = this.path_op_into(op, read_buffer);
                    let resolved = audited
                        .filter(|_| !is_denial(&result))
                        .and_then(|path| this.resolve_for_audit(&path));
                    (result, resolved)
                };
                tokio::task::spawn_blocking(work)
                    .await
                    .unwrap_or_else(|error| {
                        let error = panicked_again(error);
                        let message = format!("the operation failed inside the client: {error}");
                        (Err(OpError::new(ErrorCode::Internal, message)), None)
                    })
            }
            _ => return None,
        })
    }

    /// The authority whose entitlements these are, as messages name it.
    fn authority_name(&self) -> String {
        self.entitlements().map_or_else(
            // Not loaded: no denial by them follows.
            |_| "the server".to_owned(),
            |entitlements| entitlements.authority().to_string(),
        )
    }

    fn entitlements(&self) -> Result<Arc<Entitlements>, OpError> {
        let current = self
            .entitlements
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        current.ok_or_else(|| {
            OpError::new(
                ErrorCode::Denied,
                "this client grants no resources to this server",
            )
        })
    }

    fn env_get(&self, name: &str) -> Result<Reply, OpError> {
        let entitlements = self.entitlements()?;
        entitlements.check_env(name).map_err(denied)?;
        let value = if name == terminalwire_policy::home::HOME_ENV {
            self.home_root
                .as_ref()
                .map(|root| root.to_string_lossy().into_owned())
        } else {
            std::env::var_os(name).map(|value| value.to_string_lossy().into_owned())
        };
        Ok(Reply::Value { value })
    }

    fn browser_open(&self, url: &str) -> Result<Reply, OpError> {
        let entitlements = self.entitlements()?;
        entitlements.check_browser(url).map_err(denied)?;
        // The opener gets the URL that was checked, as parsed: the parser
        // drops leading and trailing controls and spaces and every tab and
        // newline, which the raw string still has for the opener to read
        // its own way.
        let parsed = url::Url::parse(url)
            .map_err(|error| OpError::new(ErrorCode::Invalid, format!("not a URL: {error}")))?;
        {
            let now = std::time::Instant::now();
            let mut launches = self
                .browser_launches
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            while launches
                .front()
                .is_some_and(|at| now.duration_since(*at) >= std::time::Duration::from_secs(60))
            {
                launches.pop_front();
            }
            if launches.len() >= BROWSER_LAUNCHES {
                return Err(OpError::new(
                    ErrorCode::TooLarge,
                    format!(
                        "not opening {url}: {BROWSER_LAUNCHES} browser launches a minute at most"
                    ),
                ));
            }
            launches.push_back(now);
        }
        (self.opener)(parsed.as_str()).map_err(|error| {
            OpError::new(
                ErrorCode::Io,
                format!("cannot open {url} in the browser: {error}"),
            )
        })?;
        Ok(Reply::Unit)
    }

    /// Charges a write of `bytes` that may create `entries` files or
    /// folders to the storage quota, when it is in storage.
    /// The charge is held until the write is done.
    fn charge(
        &self,
        allowed: &Allowed,
        bytes: u64,
        entries: u64,
    ) -> Result<Option<Charge<'_>>, OpError> {
        if allowed.in_storage {
            self.charge_storage(bytes, entries)
        } else {
            Ok(None)
        }
    }

    fn charge_storage(&self, bytes: u64, entries: u64) -> Result<Option<Charge<'_>>, OpError> {
        let Some(quota) = &self.quota else {
            return Ok(None);
        };
        quota.charge(bytes, entries).map(Some).map_err(|full| {
            let authority = self
                .entitlements()
                .map(|rules| rules.authority().to_string())
                .unwrap_or_default();
            OpError::new(
                ErrorCode::TooLarge,
                format!(
                    "{full} (the user can raise it: terminalwire entitlement quota {authority} MIB)"
                ),
            )
        })
    }

    fn writes(&self) -> Result<std::sync::MutexGuard<'_, Writes>, OpError> {
        self.writes
            .lock()
            .map_err(|_| OpError::new(ErrorCode::Internal, "streamed writes are unavailable"))
    }

    /// Lets go of the streamed writes whose unfinished file a delete or a
    /// replacement just unlinked: one that gets no further chunk would
    /// otherwise keep its space for the rest of the session, unseen.
    fn forget_deleted_writes(&self) {
        let Ok(mut writes) = self.writes() else {
            return;
        };
        let mut gone = Vec::new();
        writes.open.retain(|_, open| {
            let deleted = matches!(open.write.is_gone(), Ok(true));
            if deleted {
                gone.push(open.path.clone());
            }
            !deleted
        });
        drop(writes);
        for path in gone {
            self.progress.update("writing", &path, 0, None, true);
        }
    }

    fn open_write(&self, handle: u64) -> Result<Arc<OpenWrite>, OpError> {
        self.writes()?
            .open
            .get(&handle)
            .cloned()
            .ok_or_else(|| unknown_handle(handle))
    }

    fn path_op(&self, op: Operation) -> Result<Reply, OpError> {
        self.path_op_into(op, Vec::new())
    }

    /// [`path_op`](Self::path_op), a file read filling `read_buffer`
    /// ([`safe_fs::read_into`]).
    fn path_op_into(&self, op: Operation, read_buffer: Vec<u8>) -> Result<Reply, OpError> {
        #[cfg(debug_assertions)]
        debug_panic_on_path(op.path());
        let entitlements = self.entitlements()?;
        // What a denial's grant command names follows the request, not the
        // disk: a server must not learn whether a folder it may not see
        // exists from the command it is told to suggest.
        let about_a_folder = op.names_a_folder();
        let reads = op.only_reads();
        // Resolving also looks at the path, the same way `safe_fs::metadata`
        // would, in most cases: the stat-class operations use that look.
        let resolve_seen = |raw: &str| {
            entitlements
                .resolve_request(raw)
                .map(|(path, seen)| (path.named_as_folder(about_a_folder), seen))
                .map_err(|error| {
                    // Resolving looked at the disk: why it failed (a dangling
                    // link, a folder it may not enter) is only told for a path
                    // the server may use. A malformed path is its own.
                    if entitlements.normalized_ok(raw) && !entitlements.names_a_granted_path(raw) {
                        let action = if reads { Action::Read } else { Action::Write };
                        not_granted(raw, action, entitlements.authority())
                    } else {
                        OpError::new(ErrorCode::Invalid, error.to_string())
                    }
                })
        };
        let resolve = |raw: &str| resolve_seen(raw).map(|(path, _)| path);
        let look = |path: &ResolvedPath, seen: Option<Sighting>| match seen
            .and_then(safe_fs::metadata_seen)
        {
            Some(meta) => Ok(meta),
            None => safe_fs::metadata(path.as_path()).map_err(fs_error),
        };
        let check =
            |path: &ResolvedPath, action| entitlements.check_path(path, action).map_err(denied);
        match op {
            Operation::FileRead { path, offset, len } => {
                let path = resolve(&path)?;
                check(&path, Action::Read)?;
                let len = len.min(MAX_READ) as usize;
                let (bytes, eof) = safe_fs::read_into(path.as_path(), offset, len, read_buffer)
                    .map_err(fs_error)?;
                let done = offset.saturating_add(bytes.len() as u64);
                let total = if offset == 0 && !eof {
                    safe_fs::metadata(path.as_path())
                        .ok()
                        .flatten()
                        .map(|meta| meta.size)
                } else {
                    None
                };
                self.progress
                    .update("reading", path.as_path(), done, total, eof);
                Ok(Reply::Data {
                    bytes: bytes.into(),
                    eof,
                })
            }
            Operation::FileWrite { path, bytes, mode } => {
                let path = resolve(&path)?;
                let allowed = check(&path, Action::Write)?;
                let existing = safe_fs::metadata(path.as_path()).map_err(fs_error)?;
                let mode = file_mode(&entitlements, &path, &allowed, mode)?;
                // Replacing a file frees its bytes: an app that rewrites a
                // file in storage is charged what it grows by.
                let (grows, entries) = match &existing {
                    Some(old) if old.kind == Kind::File => {
                        ((bytes.len() as u64).saturating_sub(old.size), 0)
                    }
                    _ => (bytes.len() as u64, 1),
                };
                let charge = self.charge(&allowed, grows, entries)?;
                safe_fs::write_atomic(path.as_path(), &bytes, mode).map_err(fs_error)?;
                drop(charge);
                self.forget_deleted_writes();
                Ok(Reply::Unit)
            }
            Operation::FileWriteOpen { path, mode } => {
                let path = resolve(&path)?;
                let allowed = check(&path, Action::Write)?;
                let mode = file_mode(&entitlements, &path, &allowed, mode)?;
                // Charged before the table of writes is locked (the charge
                // may measure the storage folder), once it has room.
                if self.writes()?.open.len() >= MAX_OPEN_WRITES {
                    return Err(too_many_writes());
                }
                let charge = self.charge(&allowed, 0, 1)?;
                let mut writes = self.writes()?;
                if writes.ended {
                    return Err(OpError::new(
                        ErrorCode::Cancelled,
                        "the session ended before this write began",
                    ));
                }
                if writes.open.len() >= MAX_OPEN_WRITES {
                    return Err(too_many_writes());
                }
                let write = StreamedWrite::begin(path.as_path(), mode).map_err(fs_error)?;
                drop(charge);
                writes.next += 1;
                let handle = writes.next;
                writes.open.insert(
                    handle,
                    Arc::new(OpenWrite {
                        write,
                        path: path.as_path().to_path_buf(),
                        written: AtomicU64::new(0),
                        in_storage: allowed.in_storage,
                        charged_to: Mutex::new(0),
                    }),
                );
                Ok(Reply::Handle { handle })
            }
            Operation::FileWriteChunk {
                handle,
                offset,
                bytes,
            } => {
                let open = self.open_write(handle)?;
                let mut charge = None;
                if open.in_storage {
                    // What a chunk adds is how far it extends the file: one
                    // byte far past the end makes a file of that size.
                    let mut charged_to = open
                        .charged_to
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner);
                    let end = offset.saturating_add(bytes.len() as u64);
                    let grows = end.saturating_sub(*charged_to);
                    charge = self.charge_storage(grows, 0)?;
                    *charged_to = (*charged_to).max(end);
                }
                let wrote = open.write.write_at(offset, &bytes);
                drop(charge);
                if let Err(error) = wrote {
                    if matches!(error, FsError::WriteGone { .. }) {
                        // Nothing can commit it: closed once no chunk holds
                        // it, the deleted file gives its space back.
                        if let Ok(mut writes) = self.writes() {
                            writes.open.remove(&handle);
                        }
                        self.progress.update("writing", &open.path, 0, None, true);
                    }
                    return Err(fs_error(error));
                }
                let written = open
                    .written
                    .fetch_add(bytes.len() as u64, Ordering::Relaxed)
                    + bytes.len() as u64;
                self.progress
                    .update("writing", &open.path, written, None, false);
                Ok(Reply::Unit)
            }
            Operation::FileWriteCommit { handle } => {
                let open = {
                    let mut writes = self.writes()?;
                    // Chunks in flight hold the write: refuse, and keep it.
                    match writes.open.get(&handle) {
                        None => return Err(unknown_handle(handle)),
                        Some(open) if Arc::strong_count(open) > 1 => {
                            return Err(OpError::new(
                                ErrorCode::Invalid,
                                format!("streamed write {handle} still has chunks in flight"),
                            ));
                        }
                        Some(_) => {}
                    }
                    writes
                        .open
                        .remove(&handle)
                        .ok_or_else(|| unknown_handle(handle))?
                };
                let open = Arc::try_unwrap(open).map_err(|_| {
                    OpError::new(
                        ErrorCode::Invalid,
                        format!("streamed write {handle} still has chunks in flight"),
                    )
                })?;
                self.progress.update("writing", &open.path, 0, None, true);
                open.write.commit().map_err(fs_error)?;
                self.forget_deleted_writes();
                Ok(Reply::Unit)
            }
            Operation::FileWriteAbort { handle } => {
                let open = self
                    .writes()?
                    .open
                    .remove(&handle)
                    .ok_or_else(|| unknown_handle(handle))?;
                self.progress.update("writing", &open.path, 0, None, true);
                Ok(Reply::Unit)
            }
            Operation::FileAppend { path, bytes } => {
                let path = resolve(&path)?;
                let allowed = check(&path, Action::Write)?;
                let charge = self.charge(&allowed, bytes.len() as u64, 1)?;
                safe_fs::append(path.as_path(), &bytes, default_mode(&allowed, false))
                    .map_err(fs_error)?;
                drop(charge);
                Ok(Reply::Unit)
            }
            Operation::FileDelete { path } => {
                let path = resolve(&path)?;
                check(&path, Action::Write)?;
                safe_fs::delete_file(path.as_path()).map_err(fs_error)?;
                self.forget_deleted_writes();
                Ok(Reply::Unit)
            }
            Operation::FileExists { path } => {
                let (path, seen) = resolve_seen(&path)?;
                check(&path, Action::Read)?;
                let meta = look(&path, seen)?;
                Ok(Reply::Bool {
                    value: meta.is_some_and(|m| m.kind == Kind::File),
                })
            }
            Operation::DirExists { path } => {
                let (path, seen) = resolve_seen(&path)?;
                check(&path, Action::Read)?;
                let meta = look(&path, seen)?;
                Ok(Reply::Bool {
                    value: meta.is_some_and(|m| m.kind == Kind::Dir),
                })
            }
            Operation::Metadata { path } => {
                let (path, seen) = resolve_seen(&path)?;
                check(&path, Action::Read)?;
                Ok(Reply::Metadata(match look(&path, seen)? {
                    Some(meta) => Metadata {
                        exists: true,
                        kind: Some(entry_kind(meta.kind)),
                        size: meta.size,
                        mode: meta.mode,
                        modified_ms: meta.modified_unix_ms,
                    },
                    None => Metadata {
                        exists: false,
                        kind: None,
                        size: 0,
                        mode: 0,
                        modified_ms: 0,
                    },
                }))
            }
            Operation::Chmod { path, mode } => {
                let path = resolve(&path)?;
                let allowed = check(&path, Action::Write)?;
                // The ceiling depends on what is there now; chmod then
                // refuses if the kind changed before it opened the path.
                let kind = match safe_fs::metadata(path.as_path()).map_err(fs_error)? {
                    Some(meta) => meta.kind,
                    None => {
                        return Err(fs_error(FsError::NotFound {
                            path: path.as_path().to_path_buf(),
                        }));
                    }
                };
                let mode = check_mode(&entitlements, &path, &allowed, kind == Kind::Dir, mode)?;
                safe_fs::chmod(path.as_path(), mode, kind).map_err(fs_error)?;
                Ok(Reply::Unit)
            }
            Operation::DirList { path } => {
                let path = resolve(&path)?;
                check(&path, Action::Read)?;
                let entries = safe_fs::list(path.as_path(), MAX_ENTRIES).map_err(fs_error)?;
                let size: usize = entries
                    .entries
                    .iter()
                    .map(|entry| entry.name.len() + LISTED_ENTRY_OVERHEAD)
                    .sum();
                if size > MAX_LISTING_BYTES {
                    return Err(OpError::new(
                        ErrorCode::TooLarge,
                        format!(
                            "{} is too large to list: the names of its {} entries take more than {MAX_LISTING_BYTES} bytes",
                            path.as_path().display(),
                            entries.entries.len()
                        ),
                    ));
                }
                Ok(Reply::Entries {
                    entries: entries
                        .into_iter()
                        .map(|entry| DirEntry {
                            name: entry.name,
                            kind: entry_kind(entry.kind),
                        })
                        .collect(),
                })
            }
            Operation::DirCreate {
                path,
                parents,
                mode,
            } => {
                let path = resolve(&path)?;
                // `mkdir -p` of the storage folder, which the client made:
                // nothing to do (changing the folder itself is refused).
                if parents
                    && entitlements.storage_dir() == Some(path.as_path())
                    && path.as_path().is_dir()
                {
                    return Ok(Reply::Unit);
                }
                let allowed = check(&path, Action::Write)?;
                let mode = match mode {
                    Some(mode) => check_mode(&entitlements, &path, &allowed, true, mode)?,
                    None => default_mode(&allowed, true),
                };
                let mut created = 1;
                if parents {
                    // Every folder created must itself be writable by grant.
                    let mut missing = path.as_path();
                    while let Some(parent) = missing.parent() {
                        if parent.exists() {
                            break;
                        }
                        let parent_resolved = resolve(&parent.to_string_lossy())?;
                        check(&parent_resolved, Action::Write)?;
                        missing = parent;
                        created += 1;
                    }
                }
                let charge = self.charge(&allowed, 0, created)?;
                // Each folder made on the way is checked again as it is made
                // (one may have gone since), and gets the mode asked for
                // within its own grant's ceiling.
                let mut refused: Option<PolicyDenial> = None;
                let mut parent_mode = |parent: &Path| {
                    let verdict = entitlements
                        .resolve_request(&parent.to_string_lossy())
                        .ok()
                        .map(|(resolved, _)| {
                            let resolved = resolved.named_as_folder(true);
                            entitlements.check_path(&resolved, Action::Write)
                        });
                    let parent_allowed = keep_refusal(verdict, &mut refused)?;
                    Some(mode & parent_allowed.dir_mode.bits())
                };
                let made =
                    safe_fs::create_dir_with(path.as_path(), parents, mode, &mut parent_mode);
                drop(charge);
                walk_outcome(made, refused, "create")
            }
            Operation::DirDelete { path, recursive } => {
                let root = resolve(&path)?;
                check(&root, Action::Write)?;
                // Everything under the folder must be writable by grant; the
                // walk reports entries as they are, symlinks not followed.
                let mut refused: Option<PolicyDenial> = None;
                let mut may_delete = |entry: &Path, kind: Kind| {
                    let verdict = entry
                        .strip_prefix(root.as_path())
                        .ok()
                        .and_then(|relative| root.join_entry(relative, kind == Kind::Dir))
                        .map(|resolved| entitlements.check_path(&resolved, Action::Write));
                    keep_refusal(verdict, &mut refused).is_some()
                };
                let deleted = safe_fs::delete_dir(root.as_path(), recursive, &mut may_delete);
                // A recursive delete refused part way has still deleted some.
                self.forget_deleted_writes();
                walk_outcome(deleted, refused, "delete")
            }
            _ => Err(OpError::new(
                ErrorCode::Unsupported,
                "this client does not support that operation",
            )),
        }
    }
}

/// What a check made during a walk of the disk allows; a refusal is kept
/// (the first one) to tell the server why the walk stopped. `None` also
/// for a path that could not be checked at all.
fn keep_refusal<T>(
    verdict: Option<Result<T, PolicyDenial>>,
    refused: &mut Option<PolicyDenial>,
) -> Option<T> {
    match verdict? {
        Ok(allowed) => Some(allowed),
        Err(denial) => {
            refused.get_or_insert(denial);
            None
        }
    }
}

/// A walk's outcome as the server is told it: a refusal is the policy's
/// denial kept by [`keep_refusal`], else "may not `verb` PATH".
fn walk_outcome(
    walked: Result<(), FsError>,
    refused: Option<PolicyDenial>,
    verb: &str,
) -> Result<Reply, OpError> {
    match walked {
        Ok(()) => Ok(Reply::Unit),
        Err(FsError::Denied { path }) => Err(match refused {
            Some(denial) => denied(denial),
            None => OpError::new(
                ErrorCode::Denied,
                format!("may not {verb} {}", path.display()),
            ),
        }),
        Err(error) => Err(fs_error(error)),
    }
}

/// Runs a blocking resource operation off the async threads.
async fn blocking(
    work: impl FnOnce() -> Result<Reply, OpError> + Send + 'static,
) -> Result<Reply, OpError> {
    tokio::task::spawn_blocking(work)
        .await
        .unwrap_or_else(|error| {
            let error = panicked_again(error);
            Err(OpError::new(
                ErrorCode::Internal,
                format!("the operation failed inside the client: {error}"),
            ))
        })
}

/// A blocking operation's panic goes on in the request's task, which ends
/// the session (`session::run_session`): a bug in the client is not an
/// answer to the server, and the session must not go on under it (the
/// panic hook has restored the terminal). Other failures (the runtime
/// shutting down) are handed back.
pub(crate) fn panicked_again(error: tokio::task::JoinError) -> tokio::task::JoinError {
    match error.try_into_panic() {
        Ok(panic) => std::panic::resume_unwind(panic),
        Err(error) => error,
    }
}

fn check_mode(
    entitlements: &Entitlements,
    path: &ResolvedPath,
    allowed: &Allowed,
    is_dir: bool,
    mode: u32,
) -> Result<u32, OpError> {
    entitlements
        .check_mode(path, allowed, is_dir, mode)
        .map_err(denied)?;
    Ok(mode)
}

/// The mode a written file gets: the server's, once checked against the
/// ceiling; else an existing file's, within the ceiling, or the default.
fn file_mode(
    entitlements: &Entitlements,
    path: &ResolvedPath,
    allowed: &Allowed,
    mode: Option<u32>,
) -> Result<safe_fs::FileMode, OpError> {
    Ok(match mode {
        Some(mode) => {
            safe_fs::FileMode::Exactly(check_mode(entitlements, path, allowed, false, mode)?)
        }
        None => safe_fs::FileMode::Keep {
            new: default_mode(allowed, false),
            ceiling: allowed.file_mode.bits(),
        },
    })
}

fn default_mode(allowed: &Allowed, is_dir: bool) -> u32 {
    use terminalwire_policy::grant::Mode;
    let (default, ceiling) = if is_dir {
        (Mode::DEFAULT_DIR, allowed.dir_mode)
    } else {
        (Mode::DEFAULT_FILE, allowed.file_mode)
    };
    // Never above the ceiling: storage's 0600 beats the usual 0644.
    default.bits() & ceiling.bits()
}

/// What the audit log says of an operation: resource, action, target and
/// bytes sent by the server.
type Described = (&'static str, &'static str, String, Option<u64>);

/// Most bytes of a server's path, variable name or URL an audit line keeps.
/// The server chooses them: a request refused at once must not cost the
/// user megabytes of memory in the audit queue and of disk in the log.
const AUDITED_TARGET: usize = 1024;

/// `target` as the audit log keeps it: cut at [`AUDITED_TARGET`] bytes (on a
/// character boundary), with how long it was.
fn audited_target(target: &str) -> String {
    if target.len() <= AUDITED_TARGET {
        return target.to_owned();
    }
    // Its start and its end: the end of a path is what it names.
    let mut head = AUDITED_TARGET / 2;
    while !target.is_char_boundary(head) {
        head -= 1;
    }
    let mut tail = target.len() - AUDITED_TARGET / 2;
    while !target.is_char_boundary(tail) {
        tail += 1;
    }
    format!(
        "{}…{} ({} bytes in all)",
        &target[..head],
        &target[tail..],
        target.len()
    )
}

/// What the audit log says about an operation; `None` for chunks of a
/// streamed write (the open and the commit are logged).
fn describe(op: &Operation) -> Option<Described> {
    let described = |resource, action, target: &str, bytes| {
        Some((resource, action, audited_target(target), bytes))
    };
    let path = |action, p: &str| described("path", action, p, None);
    match op {
        Operation::FileRead { path: p, .. } => path("file_read", p),
        Operation::FileWrite { path: p, bytes, .. } => {
            described("path", "file_write", p, Some(bytes.len() as u64))
        }
        Operation::FileAppend { path: p, bytes } => {
            described("path", "file_append", p, Some(bytes.len() as u64))
        }
        Operation::FileDelete { path: p } => path("file_delete", p),
        Operation::FileExists { path: p } => path("file_exists", p),
        Operation::Metadata { path: p } => path("metadata", p),
        Operation::Chmod { path: p, mode } => {
            described("path", "chmod", &format!("{p} ({mode:04o})"), None)
        }
        Operation::DirList { path: p } => path("dir_list", p),
        Operation::DirCreate { path: p, .. } => path("dir_create", p),
        Operation::DirExists { path: p } => path("dir_exists", p),
        Operation::DirDelete { path: p, recursive } => path(
            if *recursive {
                "dir_delete_recursive"
            } else {
                "dir_delete"
            },
            p,
        ),
        Operation::FileWriteOpen { path: p, .. } => path("file_write_open", p),
        Operation::FileWriteCommit { handle } => Some((
            "path",
            "file_write_commit",
            format!("handle {handle}"),
            None,
        )),
        Operation::FileWriteAbort { handle } => {
            Some(("path", "file_write_abort", format!("handle {handle}"), None))
        }
        Operation::EnvGet { name } => described("env", "env_get", name, None),
        Operation::BrowserOpen { url } => described("browser", "browser_open", url, None),
        _ => None,
    }
}

fn unknown_handle(handle: u64) -> OpError {
    OpError::new(
        ErrorCode::Invalid,
        format!("no streamed write has handle {handle}"),
    )
}

fn entry_kind(kind: Kind) -> EntryKind {
    match kind {
        Kind::File => EntryKind::File,
        Kind::Dir => EntryKind::Dir,
        Kind::Symlink => EntryKind::Symlink,
        _ => EntryKind::Other,
    }
}

/// A denial of `raw` for `action` by `authority`'s entitlements that tells
/// nothing but that it is not granted.
fn not_granted(raw: &str, action: Action, authority: &impl std::fmt::Display) -> OpError {
    let denial = Denial {
        resource: "path".into(),
        action: action.to_string(),
        target: raw.to_owned(),
        reason: terminalwire_policy::decide::DenialReason::NotGranted.to_string(),
        command: None,
    };
    OpError {
        code: ErrorCode::Denied,
        message: denial_message(authority, &denial),
        denial: Some(denial),
    }
}

/// A denial's message, worded as the policy's own (`PolicyDenial`'s
/// `Display`): "AUTHORITY may not ACTION RESOURCE TARGET: REASON", and the
/// command that allows it.
fn denial_message(authority: &impl std::fmt::Display, denial: &Denial) -> String {
    let mut message = format!(
        "{authority} may not {} {} {}: {}",
        denial.action, denial.resource, denial.target, denial.reason
    );
    if let Some(command) = &denial.command {
        message.push_str(&format!(". To allow it, run: {command}"));
    }
    message
}

/// `error`, a denial by `authority`'s entitlements, as denied at a consent
/// prompt for `reason`: refused by the user (now, or the same grant earlier
/// in the session), or not answered in time.
fn denied_at_the_prompt(error: &mut OpError, reason: String, authority: &str) {
    let Some(denial) = error.denial.as_mut() else {
        return;
    };
    denial.reason = reason;
    error.message = denial_message(&authority, denial);
}

/// The wire form of a policy denial.
pub fn denied(denial: PolicyDenial) -> OpError {
    OpError {
        code: ErrorCode::Denied,
        message: denial.to_string(),
        denial: Some(Denial {
            resource: denial.resource.to_string(),
            action: denial.action.to_string(),
            target: denial.target.clone(),
            reason: denial.reason.to_string(),
            command: denial.command.clone(),
        }),
    }
}

fn fs_error(error: FsError) -> OpError {
    let code = match &error {
        FsError::NotFound { .. } | FsError::WriteGone { .. } => ErrorCode::NotFound,
        FsError::AlreadyExists { .. } => ErrorCode::Exists,
        FsError::DirectoryNotEmpty { .. } => ErrorCode::NotEmpty,
        FsError::TooLarge { .. } => ErrorCode::TooLarge,
        FsError::NotAFile { .. } | FsError::NotADirectory { .. } | FsError::InvalidPath { .. } => {
            ErrorCode::Invalid
        }
        // The disk changed between the check and the use: refuse.
        FsError::SymlinkRace { .. } | FsError::Denied { .. } => ErrorCode::Denied,
        _ => ErrorCode::Io,
    };
    OpError::new(code, error.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The server on 127.0.0.1:3000 and its entitlements under a default
    /// policy, with `dir` as both the terminalwire home and the user's home.
    fn default_entitlements(dir: &Path) -> (url::Url, Entitlements) {
        let server = url::Url::parse("http://127.0.0.1:3000/terminal").unwrap();
        let entitlements = Entitlements::new(
            &server,
            &terminalwire_policy::Home::at(dir),
            &terminalwire_policy::Policy::default(),
            dir,
            &[],
        )
        .unwrap();
        (server, entitlements)
    }

    #[tokio::test]
    async fn a_file_read_or_changed_is_logged_once_by_what_it_touched() {
        use terminalwire_policy::grant::{Access, Mode, PathGrant, PathPattern};
        let dir = tempfile::tempdir().unwrap();
        let root = std::fs::canonicalize(dir.path()).unwrap();
        let docs = root.join("docs");
        std::fs::create_dir(&docs).unwrap();
        std::fs::write(docs.join("f"), "x").unwrap();
        let mut policy = terminalwire_policy::Policy::default();
        policy.grant(terminalwire_policy::Grant::Path(PathGrant {
            pattern: PathPattern::parse(&format!("{}/**", docs.display())).unwrap(),
            access: Access::ReadWrite,
            mode: Mode::new(0o755),
        }));
        let server = url::Url::parse("http://127.0.0.1:3000/terminal").unwrap();
        let entitlements = Entitlements::new(
            &server,
            &terminalwire_policy::Home::at(root.join("tw")),
            &policy,
            &root,
            &[],
        )
        .unwrap();
        let log = root.join("audit.log");
        let resources = Resources::new(entitlements, root.clone(), Resources::system_opener())
            .with_audit(AuditLog::new(log.clone()));
        let file = docs.join("f").display().to_string();
        let spelled = format!("{}/./f", docs.display());
        for (path, mode) in [(&file, 0o644), (&spelled, 0o600), (&file, 0o644)] {
            let op = Operation::Chmod {
                path: path.clone(),
                mode,
            };
            resources.perform(op).await.unwrap().unwrap();
        }
        for path in [&file, &spelled] {
            let op = Operation::FileRead {
                path: path.clone(),
                offset: 0,
                len: 1024,
            };
            resources.perform(op).await.unwrap().unwrap();
        }
        resources.end_session();
        let entries = crate::audit::read(&log, None).unwrap();
        let one_by_one: Vec<(&str, &str)> = entries
            .iter()
            .filter(|entry| !entry.target.contains("counted"))
            .map(|entry| (entry.action.as_str(), entry.target.as_str()))
            .collect();
        let (chmod_644, chmod_600) = (format!("{file} (0644)"), format!("{file} (0600)"));
        assert_eq!(
            one_by_one,
            [
                ("chmod", chmod_644.as_str()),
                ("chmod", chmod_600.as_str()),
                ("file_read", file.as_str()),
            ],
            "each mode once, each file once, as resolved"
        );
    }

    #[tokio::test]
    async fn the_audit_log_says_who_denied_a_request_the_prompt_asked_about() {
        let dir = tempfile::tempdir().unwrap();
        let home = terminalwire_policy::Home::at(dir.path());
        let (server, entitlements) = default_entitlements(dir.path());
        let consent = Consent::new(server, home, dir.path().to_path_buf(), Vec::new());
        consent.scripted.lock().unwrap().extend([
            crate::consent::Answer::Deny.into(),
            crate::consent::Reply::NotAnswered,
        ]);
        let log = dir.path().join("audit.log");
        let resources =
            Resources::new(entitlements, dir.path().to_path_buf(), Arc::new(|_| Ok(())))
                .with_consent(consent)
                .with_audit(AuditLog::new(log.clone()));
        // Refused at the prompt; the same grant again (not asked); another
        // nobody answered; and one not asked about once nobody answers.
        for url in [
            "https://example.com/a",
            "https://example.com/b",
            "https://example.org/",
            "https://example.net/",
        ] {
            let op = Operation::BrowserOpen { url: url.into() };
            let denied = resources.perform(op).await.unwrap();
            // Worded as the policy's denials: whose entitlements, what.
            let told = format!("127.0.0.1:3000 may not launch browser {url}: ");
            assert!(
                matches!(&denied, Err(error) if error.code == ErrorCode::Denied
                    && error.message.starts_with(&told)),
                "{denied:?}"
            );
        }
        resources.end_session();
        let decisions: Vec<(String, Option<String>)> = crate::audit::read(&log, None)
            .unwrap()
            .into_iter()
            .map(|entry| (entry.decision, entry.prompt))
            .collect();
        let denied = |prompt: Option<&str>| ("denied".to_owned(), prompt.map(str::to_owned));
        assert_eq!(
            decisions,
            [
                denied(Some("refused")),
                denied(Some("refused")),
                denied(Some("unanswered")),
                denied(None),
            ]
        );
    }

    /// Resources with `docs` under `root` granted read-write with the
    /// file-mode ceiling `ceiling`.
    fn docs_resources(root: &Path, ceiling: u32) -> (Resources, PathBuf) {
        use terminalwire_policy::grant::{Access, Mode, PathGrant, PathPattern};
        let docs = root.join("docs");
        std::fs::create_dir_all(&docs).unwrap();
        let mut policy = terminalwire_policy::Policy::default();
        policy.grant(terminalwire_policy::Grant::Path(PathGrant {
            pattern: PathPattern::parse(&format!("{}/**", docs.display())).unwrap(),
            access: Access::ReadWrite,
            mode: Mode::new(ceiling),
        }));
        let server = url::Url::parse("http://127.0.0.1:3000/terminal").unwrap();
        let home = terminalwire_policy::Home::at(root.join("tw"));
        let entitlements = Entitlements::new(&server, &home, &policy, root, &[]).unwrap();
        let resources =
            Resources::new(entitlements, root.to_path_buf(), Resources::system_opener());
        (resources, docs)
    }

    #[tokio::test]
    async fn a_rewritten_file_keeps_its_mode_only_within_the_ceiling() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let root = std::fs::canonicalize(dir.path()).unwrap();
        let (resources, docs) = docs_resources(&root, 0o644);
        let mode_of = |path: &Path| std::fs::metadata(path).unwrap().permissions().mode() & 0o7777;
        // (mode before, mode after a rewrite that names none)
        let cases = [
            (0o640, 0o640),
            (0o600, 0o600),
            (0o755, 0o644),
            (0o6777, 0o644),
            (0o4755, 0o644),
            (0o1644, 0o644),
        ];
        for (i, (before, after)) in cases.into_iter().enumerate() {
            for streamed in [false, true] {
                let file = docs.join(format!("f{i}-{streamed}"));
                std::fs::write(&file, "old").unwrap();
                std::fs::set_permissions(&file, std::fs::Permissions::from_mode(before)).unwrap();
                assert_eq!(mode_of(&file), before, "set up {before:o}");
                let path = file.display().to_string();
                if streamed {
                    let opened = resources
                        .perform(Operation::FileWriteOpen { path, mode: None })
                        .await
                        .unwrap();
                    let Ok(Reply::Handle { handle }) = opened else {
                        panic!("{opened:?}")
                    };
                    let chunk = Operation::FileWriteChunk {
                        handle,
                        offset: 0,
                        bytes: b"new".to_vec().into(),
                    };
                    assert_eq!(resources.perform(chunk).await.unwrap(), Ok(Reply::Unit));
                    let commit = Operation::FileWriteCommit { handle };
                    assert_eq!(resources.perform(commit).await.unwrap(), Ok(Reply::Unit));
                } else {
                    let op = Operation::FileWrite {
                        path,
                        bytes: b"new".to_vec().into(),
                        mode: None,
                    };
                    assert_eq!(resources.perform(op).await.unwrap(), Ok(Reply::Unit));
                }
                assert_eq!(std::fs::read(&file).unwrap(), b"new");
                assert_eq!(
                    mode_of(&file),
                    after,
                    "{before:o} rewritten (streamed: {streamed})"
                );
            }
        }
        // A new file gets the default within the ceiling, decided when the
        // write looks at its target (a file deleted since the request was
        // checked cannot leave the old file's way of deciding behind).
        let (resources, docs) = docs_resources(&root.join("private"), 0o600);
        let file = docs.join("new");
        let op = Operation::FileWrite {
            path: file.display().to_string(),
            bytes: b"x".to_vec().into(),
            mode: None,
        };
        assert_eq!(resources.perform(op).await.unwrap(), Ok(Reply::Unit));
        assert_eq!(mode_of(&file), 0o600);
    }

    #[tokio::test]
    async fn folders_made_on_the_way_get_no_more_than_their_own_grant_allows() {
        use std::os::unix::fs::PermissionsExt;
        use terminalwire_policy::grant::{Access, Mode, PathGrant, PathPattern};
        let dir = tempfile::tempdir().unwrap();
        let root = std::fs::canonicalize(dir.path()).unwrap();
        std::fs::create_dir(root.join("p")).unwrap();
        let mut policy = terminalwire_policy::Policy::default();
        // Private under p, shared under any p/*/pub.
        for (pattern, ceiling) in [("p/**", 0o600), ("p/*/pub/**", 0o644)] {
            policy.grant(terminalwire_policy::Grant::Path(PathGrant {
                pattern: PathPattern::parse(&format!("{}/{pattern}", root.display())).unwrap(),
                access: Access::ReadWrite,
                mode: Mode::new(ceiling),
            }));
        }
        let server = url::Url::parse("http://127.0.0.1:3000/terminal").unwrap();
        let home = terminalwire_policy::Home::at(root.join("tw"));
        let entitlements = Entitlements::new(&server, &home, &policy, &root, &[]).unwrap();
        let resources = Resources::new(entitlements, root.clone(), Resources::system_opener());
        let mode_of = |path: &str| {
            std::fs::metadata(root.join(path))
                .unwrap()
                .permissions()
                .mode()
                & 0o7777
        };
        for (folder, mode) in [("y", Some(0o755)), ("n", None)] {
            let op = Operation::DirCreate {
                path: format!("{}/p/{folder}/pub/z", root.display()),
                parents: true,
                mode,
            };
            assert_eq!(resources.perform(op).await.unwrap(), Ok(Reply::Unit));
            assert_eq!(
                mode_of(&format!("p/{folder}")),
                0o700,
                "{folder}: under p only"
            );
            assert_eq!(mode_of(&format!("p/{folder}/pub")), 0o755, "{folder}: pub");
            assert_eq!(mode_of(&format!("p/{folder}/pub/z")), 0o755, "{folder}: z");
        }
        // What the request names alone is held to p's ceiling.
        let op = Operation::DirCreate {
            path: format!("{}/p/x", root.display()),
            parents: false,
            mode: Some(0o755),
        };
        let refused = resources.perform(op).await.unwrap().unwrap_err();
        assert_eq!(refused.code, ErrorCode::Denied, "{refused:?}");
    }

    #[test]
    fn the_browser_opens_the_url_that_was_checked_not_the_raw_string() {
        let dir = tempfile::tempdir().unwrap();
        let (_, entitlements) = default_entitlements(dir.path());
        let opened = Arc::new(Mutex::new(Vec::<String>::new()));
        let opener: Opener = {
            let opened = opened.clone();
            Arc::new(move |url: &str| {
                opened.lock().unwrap().push(url.to_owned());
                Ok(())
            })
        };
        let resources = Resources::new(entitlements, dir.path().to_path_buf(), opener);
        // The server's own origin, to the parser; not to a program that
        // reads the raw string (a leading control, a newline, a tab).
        let raw = "\u{1}http://127.0.0.1:3000/log\nin?a=1\t ";
        resources.browser_open(raw).unwrap();
        assert_eq!(*opened.lock().unwrap(), ["http://127.0.0.1:3000/login?a=1"]);
    }

    #[tokio::test]
    async fn a_streamed_write_far_past_its_end_is_charged_for_the_size_it_makes() {
        let dir = tempfile::tempdir().unwrap();
        let home = terminalwire_policy::Home::at(dir.path());
        let server = url::Url::parse("http://127.0.0.1:3000/terminal").unwrap();
        let authority = terminalwire_policy::Authority::from_url(&server).unwrap();
        std::fs::create_dir_all(home.storage_dir(&authority)).unwrap();
        let policy = terminalwire_policy::Policy {
            storage_quota_mib: Some(1),
            ..Default::default()
        };
        let entitlements = Entitlements::new(&server, &home, &policy, dir.path(), &[]).unwrap();
        let resources = Resources::new(
            entitlements,
            dir.path().to_path_buf(),
            Resources::system_opener(),
        );
        let path = format!("{}/sparse", home.storage_dir(&authority).display());
        let opened = resources
            .perform(Operation::FileWriteOpen { path, mode: None })
            .await
            .unwrap();
        let Ok(Reply::Handle { handle }) = opened else {
            panic!("{opened:?}")
        };
        let chunk = |offset: u64| Operation::FileWriteChunk {
            handle,
            offset,
            bytes: vec![1u8; 10].into(),
        };
        // Within the quota, and again over the same bytes: charged once.
        for _ in 0..3 {
            let written = resources.perform(chunk(500 * 1024)).await.unwrap();
            assert_eq!(written, Ok(Reply::Unit));
        }
        // Ten bytes at 2 MiB would make a 2 MiB file.
        let far = resources.perform(chunk(2 << 20)).await.unwrap();
        assert!(
            matches!(&far, Err(error) if error.code == ErrorCode::TooLarge),
            "{far:?}"
        );
    }

    #[tokio::test]
    async fn allow_once_leaves_the_sessions_rules_alone_while_its_request_runs() {
        let dir = tempfile::tempdir().unwrap();
        let home = terminalwire_policy::Home::at(dir.path());
        let (server, entitlements) = default_entitlements(dir.path());
        // The opener runs in the retry of the request the user allowed
        // once, and asks the session's rules about that same URL.
        let session_rules: Arc<OnceLock<Resources>> = Arc::default();
        let seen_by_others = Arc::new(Mutex::new(Vec::<bool>::new()));
        let opener: Opener = {
            let session_rules = session_rules.clone();
            let seen_by_others = seen_by_others.clone();
            Arc::new(move |url: &str| {
                let allowed = session_rules
                    .get()
                    .unwrap()
                    .entitlements()
                    .is_ok_and(|rules| rules.check_browser(url).is_ok());
                seen_by_others.lock().unwrap().push(allowed);
                Ok(())
            })
        };
        let consent = Consent::new(server, home, dir.path().to_path_buf(), Vec::new());
        consent
            .scripted
            .lock()
            .unwrap()
            .push_back(crate::consent::Answer::Once.into());
        let resources =
            Resources::new(entitlements, dir.path().to_path_buf(), opener).with_consent(consent);
        session_rules.set(resources.clone()).ok().unwrap();
        let url = "https://example.com/docs".to_owned();
        let opened = resources
            .perform(Operation::BrowserOpen { url: url.clone() })
            .await
            .unwrap();
        assert_eq!(opened, Ok(Reply::Unit));
        // Another request during the retry was not allowed by the once.
        assert_eq!(*seen_by_others.lock().unwrap(), [false]);
        // Nor after it.
        let again = resources.perform(Operation::BrowserOpen { url }).await;
        assert!(
            matches!(&again, Some(Err(error)) if error.code == ErrorCode::Denied),
            "{again:?}"
        );
    }

    #[tokio::test]
    async fn a_session_opens_a_few_browser_tabs_a_minute_not_a_flood() {
        let dir = tempfile::tempdir().unwrap();
        let (_, entitlements) = default_entitlements(dir.path());
        let opened = Arc::new(Mutex::new(0));
        let opener: Opener = {
            let opened = opened.clone();
            Arc::new(move |_: &str| {
                *opened.lock().unwrap() += 1;
                Ok(())
            })
        };
        let resources = Resources::new(entitlements, dir.path().to_path_buf(), opener);
        let open = |n: usize| Operation::BrowserOpen {
            url: format!("http://127.0.0.1:3000/page/{n}"),
        };
        for n in 0..BROWSER_LAUNCHES {
            assert_eq!(resources.perform(open(n)).await.unwrap(), Ok(Reply::Unit));
        }
        for n in 0..10 {
            let refused = resources.perform(open(100 + n)).await.unwrap();
            assert!(
                matches!(&refused, Err(error) if error.code == ErrorCode::TooLarge),
                "{refused:?}"
            );
        }
        assert_eq!(*opened.lock().unwrap(), BROWSER_LAUNCHES);
    }

    #[tokio::test]
    async fn recursive_deletes_take_turns() {
        let dir = tempfile::tempdir().unwrap();
        let home = terminalwire_policy::Home::at(dir.path());
        let server = url::Url::parse("http://127.0.0.1:3000/terminal").unwrap();
        let authority = terminalwire_policy::Authority::from_url(&server).unwrap();
        let storage = home.storage_dir(&authority);
        let doomed = storage.join("doomed");
        std::fs::create_dir_all(doomed.join("sub")).unwrap();
        let policy = terminalwire_policy::Policy::default();
        let entitlements = Entitlements::new(&server, &home, &policy, dir.path(), &[]).unwrap();
        let resources = Resources::new(
            entitlements,
            dir.path().to_path_buf(),
            Resources::system_opener(),
        );
        // As if two deletes were walking their trees.
        let running = resources
            .recursive_deletes
            .clone()
            .acquire_many_owned(RECURSIVE_DELETES as u32)
            .await
            .unwrap();
        let delete = resources.perform(Operation::DirDelete {
            path: doomed.display().to_string(),
            recursive: true,
        });
        tokio::pin!(delete);
        let waited = tokio::time::timeout(std::time::Duration::from_millis(200), &mut delete).await;
        assert!(waited.is_err(), "a third delete ran: {waited:?}");
        assert!(doomed.exists());
        drop(running);
        assert_eq!(delete.await.unwrap(), Ok(Reply::Unit));
        assert!(!doomed.exists());
    }

    /// Resources for a server on 127.0.0.1:3000 with a default policy, and
    /// its storage folder (created).
    fn storage_resources(dir: &tempfile::TempDir) -> (Resources, PathBuf) {
        let home = terminalwire_policy::Home::at(dir.path());
        let server = url::Url::parse("http://127.0.0.1:3000/terminal").unwrap();
        let authority = terminalwire_policy::Authority::from_url(&server).unwrap();
        let storage = home.storage_dir(&authority);
        std::fs::create_dir_all(&storage).unwrap();
        let policy = terminalwire_policy::Policy::default();
        let entitlements = Entitlements::new(&server, &home, &policy, dir.path(), &[]).unwrap();
        let resources = Resources::new(
            entitlements,
            dir.path().to_path_buf(),
            Resources::system_opener(),
        );
        (resources, storage)
    }

    /// What unlinks the unfinished file of a streamed write in
    /// [`a_streamed_write_whose_file_was_deleted_stops_and_lets_it_go`].
    #[derive(Debug, Clone, Copy)]
    enum Unlinked {
        FileDelete,
        RecursiveDirDelete,
        FileWriteOverIt,
        ALocalProcess,
    }

    /// A panic while the table of writes is locked (which ends the session)
    /// must not stop the end's clean-up of unfinished writes.
    #[tokio::test]
    async fn a_poisoned_table_of_writes_still_loses_its_files_at_the_end() {
        let dir = tempfile::tempdir().unwrap();
        let (resources, storage) = storage_resources(&dir);
        let opened = resources
            .perform(Operation::FileWriteOpen {
                path: format!("{}/late", storage.display()),
                mode: None,
            })
            .await
            .unwrap();
        assert!(matches!(opened, Ok(Reply::Handle { .. })), "{opened:?}");
        let writes = resources.writes.clone();
        let _ = std::thread::spawn(move || {
            let _held = writes.lock().unwrap();
            panic!("a bug while the table of writes is locked");
        })
        .join();
        resources.end_session();
        let left: Vec<_> = std::fs::read_dir(&storage).unwrap().collect();
        assert!(left.is_empty(), "left after the end: {left:?}");
    }

    /// An open that reaches the table of writes after the session ended
    /// (its thread was still running at the end) makes no file: the end's
    /// clean-up has passed, and nobody would remove it.
    #[tokio::test]
    async fn a_streamed_write_opened_after_the_session_ended_makes_no_file() {
        let dir = tempfile::tempdir().unwrap();
        let (resources, storage) = storage_resources(&dir);
        resources.end_session();
        let open = || Operation::FileWriteOpen {
            path: format!("{}/late", storage.display()),
            mode: None,
        };
        let opened = resources.perform(open()).await.unwrap();
        assert!(
            matches!(&opened, Err(error) if error.code == ErrorCode::Cancelled),
            "{opened:?}"
        );
        let left: Vec<_> = std::fs::read_dir(&storage).unwrap().collect();
        assert!(left.is_empty(), "{left:?}");
        // The same resources in a next session (a library's caller may
        // reuse them): writes begin again.
        resources.set_session("next");
        let opened = resources.perform(open()).await.unwrap();
        assert!(matches!(opened, Ok(Reply::Handle { .. })), "{opened:?}");
    }

    #[tokio::test]
    async fn a_streamed_write_whose_file_was_deleted_stops_and_lets_it_go() {
        for how in [
            Unlinked::FileDelete,
            Unlinked::RecursiveDirDelete,
            Unlinked::FileWriteOverIt,
            Unlinked::ALocalProcess,
        ] {
            let dir = tempfile::tempdir().unwrap();
            let (resources, storage) = storage_resources(&dir);
            let folder = storage.join("f");
            std::fs::create_dir(&folder).unwrap();
            let opened = resources
                .perform(Operation::FileWriteOpen {
                    path: format!("{}/big", folder.display()),
                    mode: None,
                })
                .await
                .unwrap();
            let Ok(Reply::Handle { handle }) = opened else {
                panic!("{opened:?}")
            };
            let chunk = |offset: u64| Operation::FileWriteChunk {
                handle,
                offset,
                bytes: vec![1u8; 4096].into(),
            };
            assert_eq!(resources.perform(chunk(0)).await.unwrap(), Ok(Reply::Unit));
            // The server finds the unfinished file in a listing and deletes
            // it: while open, it takes disk space that no measure sees.
            let listed = resources
                .perform(Operation::DirList {
                    path: folder.display().to_string(),
                })
                .await
                .unwrap();
            let Ok(Reply::Entries { entries, .. }) = listed else {
                panic!("{listed:?}")
            };
            let [unfinished] = &entries[..] else {
                panic!("{entries:?}")
            };
            let unfinished = folder.join(&unfinished.name);
            let by_server = match how {
                Unlinked::FileDelete => Some(Operation::FileDelete {
                    path: unfinished.display().to_string(),
                }),
                Unlinked::RecursiveDirDelete => Some(Operation::DirDelete {
                    path: folder.display().to_string(),
                    recursive: true,
                }),
                Unlinked::FileWriteOverIt => Some(Operation::FileWrite {
                    path: unfinished.display().to_string(),
                    bytes: b"x".to_vec().into(),
                    mode: None,
                }),
                Unlinked::ALocalProcess => {
                    std::fs::remove_file(&unfinished).unwrap();
                    None
                }
            };
            // Descriptors name the real path, not one through a symlink.
            let real_storage = storage.canonicalize().unwrap();
            let file_is_open = || {
                std::fs::read_dir("/proc/self/fd")
                    .unwrap()
                    .flatten()
                    .filter_map(|fd| std::fs::read_link(fd.path()).ok())
                    .any(|target| target.starts_with(&real_storage))
            };
            assert!(
                file_is_open(),
                "{how:?}: the unfinished file is not seen open"
            );
            if let Some(op) = by_server {
                assert_eq!(resources.perform(op).await.unwrap(), Ok(Reply::Unit));
                // Let go at once: the server need not send another chunk.
                assert!(!file_is_open(), "{how:?}: the deleted file is still open");
                let refused = resources.perform(chunk(4096)).await.unwrap();
                assert!(
                    matches!(&refused, Err(error) if error.message.contains("no streamed write has handle")),
                    "{how:?}: {refused:?}"
                );
            } else {
                // Nothing told the client: the next chunk finds out.
                let refused = resources.perform(chunk(4096)).await.unwrap();
                assert!(
                    matches!(&refused, Err(error) if error.code == ErrorCode::NotFound
                        && error.message.contains("deleted while it was being written")),
                    "{how:?}: {refused:?}"
                );
                assert!(!file_is_open(), "{how:?}: the deleted file is still open");
                let again = resources.perform(chunk(8192)).await.unwrap();
                assert!(again.is_err(), "{how:?}: {again:?}");
            }
        }
    }

    #[tokio::test]
    async fn the_storage_folder_itself_stays_the_clients() {
        let dir = tempfile::tempdir().unwrap();
        let (resources, storage) = storage_resources(&dir);
        let path = storage.display().to_string();
        // Deleted then appended to, it became a file the quota never saw
        // (and the next session could not start); made unreadable, its
        // contents were hidden from the quota's measure.
        for op in [
            Operation::DirDelete {
                path: path.clone(),
                recursive: true,
            },
            Operation::FileAppend {
                path: path.clone(),
                bytes: vec![1; 10].into(),
            },
            Operation::Chmod {
                path: path.clone(),
                mode: 0o300,
            },
            Operation::FileWriteOpen {
                path: path.clone(),
                mode: None,
            },
        ] {
            let what = format!("{op:?}");
            let refused = resources.perform(op).await.unwrap();
            assert!(
                matches!(&refused, Err(error) if error.code == ErrorCode::Denied),
                "{what}: {refused:?}"
            );
        }
        // `mkdir -p` of it changes nothing and is fine; what is in it is the
        // app's.
        let created = resources
            .perform(Operation::DirCreate {
                path: path.clone(),
                parents: true,
                mode: None,
            })
            .await
            .unwrap();
        assert_eq!(created, Ok(Reply::Unit));
        let inside = format!("{path}/notes");
        let written = resources
            .perform(Operation::FileWrite {
                path: inside,
                bytes: vec![1; 10].into(),
                mode: None,
            })
            .await
            .unwrap();
        assert_eq!(written, Ok(Reply::Unit));
        use std::os::unix::fs::PermissionsExt;
        let meta = std::fs::metadata(&storage).unwrap();
        assert!(meta.is_dir());
        assert_eq!(meta.permissions().mode() & 0o700, 0o700);
    }

    #[tokio::test]
    async fn an_audit_line_keeps_a_bounded_part_of_a_huge_target() {
        let dir = tempfile::tempdir().unwrap();
        let (_, entitlements) = default_entitlements(dir.path());
        let log = dir.path().join("audit.log");
        let resources = Resources::new(
            entitlements,
            dir.path().to_path_buf(),
            Resources::system_opener(),
        )
        .with_audit(AuditLog::new(log.clone()));
        // Refused at once (far over PATH_MAX), yet audited: each such line
        // kept whole took megabytes (six per control character in JSON).
        let huge = format!("/{}", "\u{1}é".repeat(300_000));
        let refused = resources
            .perform_now(Operation::FileExists { path: huge.clone() })
            .unwrap();
        assert!(refused.is_err(), "{refused:?}");
        let named = format!("~/{}", "x".repeat(100));
        resources
            .perform_now(Operation::FileExists {
                path: named.clone(),
            })
            .unwrap()
            .ok();
        resources.end_session();
        let entries = crate::audit::read(&log, None).unwrap();
        assert_eq!(entries.len(), 2);
        let kept = &entries[0].target;
        assert!(
            kept.len() < AUDITED_TARGET + 64,
            "{} bytes kept",
            kept.len()
        );
        // Its start and its end (what a path names is at its end).
        let (prefix, rest) = kept.split_once('…').unwrap();
        let (suffix, all) = rest.rsplit_once(" (").unwrap();
        assert!(prefix.len() > AUDITED_TARGET / 2 - 4 && huge.starts_with(prefix));
        assert!(suffix.len() > AUDITED_TARGET / 2 - 4 && huge.ends_with(suffix));
        assert_eq!(all, format!("{} bytes in all)", huge.len()));
        // A target of usual length is kept as it was.
        assert_eq!(entries[1].target, named);
        let on_disk = std::fs::metadata(&log).unwrap().len();
        assert!(on_disk < 16 * 1024, "the log took {on_disk} bytes");
    }

    #[test]
    fn the_end_of_a_session_writes_the_audit_log_without_waiting_out_the_gathering() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.log");
        let mut audit = Audit::new(AuditLog::new(path.clone()));
        // Far longer than a flush waits (AUDIT_FLUSH_TIMEOUT): only a flush
        // that wakes the writer finds the record written.
        audit.gather = std::time::Duration::from_secs(3600);
        audit.record(Record {
            time: std::time::SystemTime::now(),
            resource: "path",
            action: "file_exists",
            target: "~/f".into(),
            decision: "allowed".into(),
            bytes: None,
            significant: false,
            same_as: None,
            prompt: None,
        });
        // The writer took the record and gathers (parked): only a flush
        // that wakes it gets the record written in time.
        let give_up = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while !audit.gathering.load(Ordering::SeqCst) {
            assert!(
                std::time::Instant::now() < give_up,
                "the audit writer never started to gather"
            );
            std::thread::yield_now();
        }
        audit.flush();
        let entries = crate::audit::read(&path, None).unwrap();
        assert_eq!(entries.len(), 1, "the record was not written by the flush");
        assert_eq!(entries[0].target, "~/f");
    }
}
