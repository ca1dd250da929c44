//! The client-side audit log: every file, directory, environment and browser
//! request of a server, allowed or denied, appended as one JSON line to
//! `authorities/<authority>/audit.log`. The log is bounded: past
//! [`MAX_LOG_BYTES`] it is rotated to `audit.log.1` (one old file kept).
//! Clients of the same authority rotate it under a lock (`audit.log.lock`).
//!
//! A server could push the history of its earlier sessions out of that
//! bound with a flood of cheap requests. So each session writes a bounded
//! amount of lines one by one, in two budgets: [`SESSION_BUDGET_BYTES`] for
//! what moves nothing (existence checks, listings, metadata), what stays in
//! the server's own storage, and denials; [`SIGNIFICANT_BUDGET_BYTES`] for
//! what reads or changes the user's files, environment or browser (a flood
//! of the first kind cannot hide one of these). Past its budget, a kind of
//! request is counted, and summed up per resource, action and decision (and
//! [`Record::prompt`]) when the session ends ([`AuditLog::finish`]).
//! Sessions are started by the user, never by the server: the log keeps the
//! last few whatever they did.

use std::borrow::Cow;
use std::fmt::Write as _;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::SystemTime;

use serde::{Deserialize, Serialize};

/// Size at which the log is rotated.
pub const MAX_LOG_BYTES: u64 = 1024 * 1024;

/// Lines of requests that move nothing, stay in storage or are denied
/// that one session writes one by one, at most.
pub const SESSION_BUDGET_BYTES: u64 = MAX_LOG_BYTES / 4;

/// Lines of requests that read or change the user's files, environment or
/// browser that one session writes one by one, at most. With the other
/// budget, under half of what the log and its rotated file keep.
pub const SIGNIFICANT_BUDGET_BYTES: u64 = MAX_LOG_BYTES / 2;

/// Most bytes `terminalwire audit` reads of each file: a log is rotated
/// near [`MAX_LOG_BYTES`], so more means it is not the client's log.
const MAX_READ_BYTES: u64 = 16 * MAX_LOG_BYTES;

/// One audited action.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    /// When, RFC 3339 UTC.
    pub time: String,
    /// The session (the server's session id).
    pub session: String,
    /// `path`, `env` or `browser`.
    pub resource: String,
    /// The operation (`file_read`, `dir_list`, `env_get`, ...).
    pub action: String,
    /// The path, variable or URL as the server sent it (its first KiB).
    pub target: String,
    /// `allowed`, `denied`, or the error code of a permitted action that failed.
    pub decision: String,
    /// Bytes moved, when any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bytes: Option<u64>,
    /// What the consent prompt made of a denied request, when it asked:
    /// `refused` or `unanswered`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prompt: Option<String>,
}

/// An [`Entry`] as written, borrowing its fields.
#[derive(Serialize)]
struct EntryRef<'a> {
    time: &'a str,
    session: &'a str,
    resource: &'a str,
    action: &'a str,
    target: &'a str,
    decision: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    bytes: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    prompt: Option<&'a str>,
}

/// The audit log of one authority.
#[derive(Debug, Clone)]
pub struct AuditLog {
    path: PathBuf,
    session: Arc<OnceLock<String>>,
    /// What this session wrote, and what it counted past its budgets.
    tally: Arc<Mutex<Tally>>,
    /// The budgets of requests that are not [`Record::significant`], and
    /// of those that are.
    budgets: [u64; 2],
    lock: Arc<Mutex<()>>,
    /// The last wait for the lock timed out: until it is had again, it is
    /// only tried, not waited for (a stopped client holding it must not
    /// slow every batch by the wait).
    lock_timed_out: Arc<std::sync::atomic::AtomicBool>,
}

/// Requests of a session past its budget, by what they were.
#[derive(Debug, Default)]
struct Tally {
    /// Bytes written of requests that are not significant, and of those
    /// that are.
    written: [u64; 2],
    /// Requests past their budget, by kind, resource, action, decision and
    /// what the consent prompt made of a denial.
    counted: std::collections::BTreeMap<CountedKey, Counted>,
    /// Whether the log said that a kind's budget is spent.
    said: [bool; 2],
    /// The significant requests logged one by one (a hash of each): a
    /// repeat is counted, so that rereading one granted variable cannot
    /// spend the budget.
    significant_seen: std::collections::HashSet<u64>,
    /// The session is over: late records are written one by one.
    finished: bool,
    /// When what was counted is next written as sums, so that a client
    /// killed before its end loses little: 1 s after the first count, then
    /// twice as long each time (bounded lines however long the session).
    next_sums: Option<std::time::Instant>,
    sums_every: std::time::Duration,
}

/// What requests past their budget are summed by: kind (significant),
/// resource, action, decision and [`Record::prompt`].
type CountedKey = (
    bool,
    &'static str,
    &'static str,
    String,
    Option<&'static str>,
);

#[derive(Debug, Default)]
struct Counted {
    requests: u64,
    bytes: Option<u64>,
}

impl AuditLog {
    /// The log at `path`.
    pub fn new(path: PathBuf) -> Self {
        AuditLog {
            path,
            session: Arc::default(),
            tally: Arc::default(),
            budgets: [SESSION_BUDGET_BYTES, SIGNIFICANT_BUDGET_BYTES],
            lock: Arc::default(),
            lock_timed_out: Arc::default(),
        }
    }

    /// What a request touched, for [`Record::same_as`]: its action and
    /// its resolved path (or variable, or URL). Keyed once per process, so
    /// that a server cannot aim at collisions.
    pub fn identity(action: &str, touched: &str) -> u64 {
        use std::hash::BuildHasher;
        SEEN_HASHER.hash_one((action, touched))
    }

    /// Writes the sums of what the session counted past its budget, one
    /// line per resource, action, decision and prompt. Called at the end of the
    /// session; again, it writes only what was counted since.
    pub fn finish(&self) {
        let counted = {
            let mut tally = self.tally.lock().unwrap_or_else(PoisonError::into_inner);
            tally.finished = true;
            std::mem::take(&mut tally.counted)
        };
        if counted.is_empty() {
            return;
        }
        let session = self.session.get().map_or("", String::as_str);
        self.write(&encode(session, &sums(counted, SystemTime::now())));
    }

    /// Names the session for later entries (once, from the welcome).
    pub fn set_session(&self, session: &str) {
        let _ = self.session.set(session.to_owned());
    }

    /// Appends one entry, timed now; failures are logged, never fatal.
    pub fn record(
        &self,
        resource: &'static str,
        action: &'static str,
        target: &str,
        decision: &str,
        bytes: Option<u64>,
    ) {
        self.record_all(&[Record {
            time: SystemTime::now(),
            resource,
            action,
            target: target.to_owned(),
            decision: Cow::Owned(decision.to_owned()),
            bytes,
            significant: false,
            same_as: None,
            prompt: None,
        }]);
    }

    /// Appends entries with one write (a busy session queues many: one
    /// open and write per line was a quarter of a small request's cost);
    /// failures are logged, never fatal.
    pub fn record_all(&self, records: &[Record]) {
        if records.is_empty() {
            return;
        }
        let session = self.session.get().map_or("", String::as_str);
        let mut lines = Vec::with_capacity(records.len() * 192);
        let mut time = String::with_capacity(32);
        let mut tally = self.tally.lock().unwrap_or_else(PoisonError::into_inner);
        for record in records {
            let kind = usize::from(record.significant);
            // A repeat of what was logged is counted (the set holds only
            // what was written, so it is bounded by the budget).
            let repeat = record.significant
                && record
                    .same_as
                    .is_some_and(|same| tally.significant_seen.contains(&same));
            let over_budget = tally.written[kind] >= self.budgets[kind];
            if !tally.finished && (repeat || over_budget) {
                if !repeat && !tally.said[kind] {
                    tally.said[kind] = true;
                    let notice = Record {
                        time: record.time,
                        resource: "audit",
                        action: "budget",
                        target: format!(
                            "this session wrote {} bytes of entries of {}: its further ones \
                             are counted and written as sums",
                            tally.written[kind],
                            if record.significant {
                                "requests that read or change your files, environment or browser"
                            } else {
                                "requests that move nothing, stay in its storage or are denied"
                            }
                        ),
                        decision: Cow::Borrowed("counted"),
                        bytes: None,
                        significant: false,
                        same_as: None,
                        prompt: None,
                    };
                    encode_into(&mut lines, &mut time, session, &notice);
                }
                let counted = tally
                    .counted
                    .entry((
                        record.significant,
                        record.resource,
                        record.action,
                        record.decision.to_string(),
                        record.prompt,
                    ))
                    .or_default();
                counted.requests += 1;
                if let Some(bytes) = record.bytes {
                    counted.bytes = Some(counted.bytes.unwrap_or(0).saturating_add(bytes));
                }
                continue;
            }
            let before = lines.len();
            encode_into(&mut lines, &mut time, session, record);
            tally.written[kind] = tally.written[kind].saturating_add((lines.len() - before) as u64);
            if let Some(same) = record.same_as.filter(|_| record.significant) {
                tally.significant_seen.insert(same);
            }
        }
        if !tally.counted.is_empty() {
            let now = std::time::Instant::now();
            let due = *tally.next_sums.get_or_insert(now + FIRST_SUMS_AFTER);
            if now >= due {
                let every = (tally.sums_every.max(FIRST_SUMS_AFTER) * 2).min(MAX_SUMS_EVERY);
                tally.sums_every = every;
                tally.next_sums = Some(now + every);
                let counted = std::mem::take(&mut tally.counted);
                for sum in sums(counted, SystemTime::now()) {
                    encode_into(&mut lines, &mut time, session, &sum);
                }
            }
        }
        drop(tally);
        if !lines.is_empty() {
            self.write(&lines);
        }
    }

    /// Appends `lines`; a failure is logged, never fatal.
    fn write(&self, lines: &[u8]) {
        if let Err(error) = self.append(lines) {
            tracing::warn!(%error, path = %self.path.display(), "cannot write the audit log");
        }
    }

    fn append(&self, lines: &[u8]) -> io::Result<()> {
        use std::os::unix::fs::OpenOptionsExt;
        let _one_writer = self.lock.lock().unwrap_or_else(PoisonError::into_inner);
        // Other clients of this authority write the same log. Two that
        // found it full at once both rotated it, the second moving the new,
        // nearly empty log over the rotated one: a megabyte of history lost.
        // The check, the rotation and the append are made under a lock they
        // all take (released when the file closes).
        // Without the lock (it cannot be made, or a client holding it is
        // stopped), the line is still written: unlocked, as before.
        use std::sync::atomic::Ordering;
        let wait = if self.lock_timed_out.load(Ordering::Relaxed) {
            // Long enough for a healthy client's append.
            std::time::Duration::from_millis(10)
        } else {
            LOCK_WAIT
        };
        let locked = lock_log(&self.path, wait);
        self.lock_timed_out
            .store(locked.is_none(), Ordering::Relaxed);
        if std::fs::metadata(&self.path).is_ok_and(|meta| meta.len() >= MAX_LOG_BYTES) {
            std::fs::rename(&self.path, rotated(&self.path))?;
        }
        let mut file = std::fs::OpenOptions::new()
            .append(true)
            .create(true)
            .mode(0o600)
            .open(&self.path)?;
        // One write of whole lines: concurrent clients never interleave a line.
        file.write_all(lines)
    }
}

/// What was counted, as sum records timed `time`.
fn sums(counted: std::collections::BTreeMap<CountedKey, Counted>, time: SystemTime) -> Vec<Record> {
    counted
        .into_iter()
        .map(
            |((_, resource, action, decision, prompt), counted)| Record {
                time,
                resource,
                action,
                target: format!(
                    "({} more requests of this session: counted, not logged one by one)",
                    counted.requests
                ),
                decision: Cow::Owned(decision),
                bytes: counted.bytes,
                significant: false,
                same_as: None,
                prompt,
            },
        )
        .collect()
}

/// The first wait before what was counted is written as sums.
const FIRST_SUMS_AFTER: std::time::Duration = std::time::Duration::from_secs(1);
/// The longest wait between sums.
const MAX_SUMS_EVERY: std::time::Duration = std::time::Duration::from_secs(3600);

/// Hashes the significant requests a session logged; keyed once per
/// process, so that a server cannot aim at collisions.
static SEEN_HASHER: std::sync::LazyLock<std::collections::hash_map::RandomState> =
    std::sync::LazyLock::new(std::collections::hash_map::RandomState::new);

/// The JSON lines of `records`.
fn encode(session: &str, records: &[Record]) -> Vec<u8> {
    let mut lines = Vec::with_capacity(records.len() * 192);
    let mut time = String::with_capacity(32);
    for record in records {
        encode_into(&mut lines, &mut time, session, record);
    }
    lines
}

/// Appends the JSON line of `record` to `lines`; `time` is scratch space.
fn encode_into(lines: &mut Vec<u8>, time: &mut String, session: &str, record: &Record) {
    time.clear();
    let _ = write!(time, "{}", humantime::format_rfc3339_millis(record.time));
    // Borrowed: a busy session writes thousands of lines a second.
    let entry = EntryRef {
        time,
        session,
        resource: record.resource,
        action: record.action,
        target: &record.target,
        decision: &record.decision,
        bytes: record.bytes,
        prompt: record.prompt,
    };
    let before = lines.len();
    if let Err(error) = serde_json::to_writer(&mut *lines, &entry) {
        tracing::warn!(%error, "cannot encode an audit entry");
        lines.truncate(before);
        return;
    }
    lines.push(b'\n');
}

/// An action to audit, timed when it happened (it may be written later).
#[derive(Debug, Clone)]
pub struct Record {
    /// When the action was performed.
    pub time: SystemTime,
    /// `path`, `env` or `browser`.
    pub resource: &'static str,
    /// The operation (`file_read`, `dir_list`, `env_get`, ...).
    pub action: &'static str,
    /// The path, variable or URL as the server sent it (its first KiB).
    pub target: String,
    /// `allowed`, `denied`, or the error code of a permitted action that failed.
    pub decision: Cow<'static, str>,
    /// Bytes moved, when any.
    pub bytes: Option<u64>,
    /// Whether it read or changed the user's files (outside the server's
    /// storage), environment or browser: such requests have a budget of
    /// their own ([`SIGNIFICANT_BUDGET_BYTES`]).
    pub significant: bool,
    /// What it touched ([`AuditLog::identity`]): a significant request
    /// that touched what one logged before touched is counted, not logged
    /// again.
    pub same_as: Option<u64>,
    /// For a request denied at the consent prompt: [`PROMPT_REFUSED`] or
    /// [`PROMPT_UNANSWERED`] (its decision stays `denied`).
    pub prompt: Option<&'static str>,
}

/// [`Record::prompt`] of a request the user refused at the consent prompt
/// (now or earlier in the session).
pub const PROMPT_REFUSED: &str = "refused";

/// [`Record::prompt`] of a request whose consent prompt got no answer in
/// time: nobody refused it.
pub const PROMPT_UNANSWERED: &str = "unanswered";

/// How long a client waits for another to finish with the log before it
/// writes without the lock.
const LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(1);

/// Locks the log at `path` against other clients; `None` when that fails
/// or takes longer than `wait`. Unlocked when the file closes.
fn lock_log(path: &Path, wait: std::time::Duration) -> Option<std::fs::File> {
    use rustix::fs::{FlockOperation, flock};
    use std::os::unix::fs::OpenOptionsExt;
    let lock = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(lock_path(path))
        .ok()?;
    let started = std::time::Instant::now();
    loop {
        match flock(&lock, FlockOperation::NonBlockingLockExclusive) {
            Ok(()) => return Some(lock),
            Err(rustix::io::Errno::WOULDBLOCK | rustix::io::Errno::INTR)
                if started.elapsed() < wait =>
            {
                std::thread::sleep(std::time::Duration::from_millis(1));
            }
            Err(_) => return None,
        }
    }
}

/// The lock file of the log at `path`.
fn lock_path(path: &Path) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(".lock");
    PathBuf::from(name)
}

fn rotated(path: &Path) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(".1");
    PathBuf::from(name)
}

/// What [`read_log`] found in a log and its rotated file.
#[derive(Debug, Default)]
pub struct Read {
    /// The entries, older rotated file first.
    pub entries: Vec<Entry>,
    /// Each file that had lines that are not entries (appended garbage, a
    /// line torn by a crash), with how many: shown, never silently lost.
    pub unreadable: Vec<(PathBuf, usize)>,
}

/// The entries of the log at `path` (older rotated file first), skipping
/// lines that are not entries; only those at or after `since` when given.
pub fn read(path: &Path, since: Option<SystemTime>) -> io::Result<Vec<Entry>> {
    read_log(path, since).map(|read| read.entries)
}

/// [`read`], also counting the lines skipped in each file.
pub fn read_log(path: &Path, since: Option<SystemTime>) -> io::Result<Read> {
    let mut read = Read::default();
    for file in [rotated(path), path.to_path_buf()] {
        let Some(bytes) =
            terminalwire_policy::read_own_file_bytes(&file, MAX_READ_BYTES).map_err(|error| {
                io::Error::new(error.kind(), format!("{}: {error}", file.display()))
            })?
        else {
            continue;
        };
        let mut unreadable = 0;
        // A damaged line is skipped, and counted; an empty one (the end
        // of the last line) is nothing.
        for line in bytes.split(|&byte| byte == b'\n') {
            let Ok(entry) = serde_json::from_slice::<Entry>(line) else {
                if !line.is_empty() {
                    unreadable += 1;
                }
                continue;
            };
            let recent = since.is_none_or(|since| {
                humantime::parse_rfc3339_weak(&entry.time).is_ok_and(|time| time >= since)
            });
            if recent {
                read.entries.push(entry);
            }
        }
        if unreadable > 0 {
            read.unreadable.push((file, unreadable));
        }
    }
    Ok(read)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The requests a sum line counts: `(N more requests ...)`.
    fn counted_requests(target: &str) -> u64 {
        let count = target.strip_prefix('(').unwrap().split(' ').next().unwrap();
        count.parse().unwrap()
    }

    #[test]
    fn entries_are_appended_read_back_filtered_and_rotated() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.log");
        let log = AuditLog::new(path.clone());
        log.set_session("s-1");
        log.record("path", "file_read", "~/a", "allowed", Some(3));
        log.record("env", "env_get", "HOME", "denied", None);
        let entries = read(&path, None).unwrap();
        assert_eq!(entries.len(), 2);
        assert_eq!(entries[0].session, "s-1");
        assert_eq!(entries[1].decision, "denied");
        let future = SystemTime::now() + std::time::Duration::from_secs(3600);
        assert!(read(&path, Some(future)).unwrap().is_empty());

        std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap()
            .write_all(&vec![b'x'; MAX_LOG_BYTES as usize])
            .unwrap();
        log.record("browser", "browser_open", "https://x", "allowed", None);
        assert!(rotated(&path).exists());
        let after = read_log(&path, None).unwrap();
        assert_eq!(
            after.entries.len(),
            3,
            "old entries stay readable, junk lines are skipped"
        );
        // ...and counted, of the file they are in.
        assert_eq!(after.unreadable, vec![(rotated(&path), 1)]);
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
    }

    /// Lines that are not entries (garbage appended, a line torn by a
    /// crash) are counted per file, whatever `since` keeps; blank lines
    /// and the end of the last line are not lines of the log.
    #[test]
    fn lines_that_are_not_entries_are_counted() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.log");
        let log = AuditLog::new(path.clone());
        log.set_session("s-1");
        log.record("env", "env_get", "HOME", "denied", None);
        let mut file = std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap();
        file.write_all(b"garbage\n\n{\"time\":1}\n").unwrap();
        log.record("env", "env_get", "LANG", "denied", None);
        file.write_all(b"{\"torn").unwrap();
        let read = read_log(&path, None).unwrap();
        assert_eq!(read.entries.len(), 2);
        assert_eq!(read.unreadable, vec![(path.clone(), 3)]);
        let future = SystemTime::now() + std::time::Duration::from_secs(3600);
        let read = read_log(&path, Some(future)).unwrap();
        assert!(read.entries.is_empty());
        assert_eq!(read.unreadable, vec![(path.clone(), 3)]);
        // A log of entries only has none.
        std::fs::remove_file(&path).unwrap();
        log.record("env", "env_get", "TZ", "denied", None);
        assert!(read_log(&path, None).unwrap().unreadable.is_empty());
    }

    #[test]
    fn a_flood_past_the_sessions_budget_is_counted_not_logged_one_by_one() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.log");
        // An earlier session's entry, which the flood must not push out.
        let earlier = AuditLog::new(path.clone());
        earlier.set_session("earlier");
        earlier.record("path", "file_read", "~/secret", "allowed", Some(9));
        let mut log = AuditLog::new(path.clone());
        log.budgets = [10 * 1024, 4 * 1024];
        log.set_session("flood");
        let flood: Vec<Record> = (0..5000)
            .map(|index| Record {
                time: SystemTime::now(),
                resource: "path",
                action: if index % 2 == 0 {
                    "file_read"
                } else {
                    "file_exists"
                },
                target: format!("~/f{index}"),
                decision: Cow::Borrowed(if index % 5 == 0 { "denied" } else { "allowed" }),
                bytes: (index % 2 == 0).then_some(10),
                significant: false,
                same_as: None,
                prompt: None,
            })
            .collect();
        for batch in flood.chunks(256) {
            log.record_all(batch);
        }
        let logged = std::fs::metadata(&path).unwrap().len();
        assert!(logged < 12 * 1024, "{logged} bytes logged");
        // The flood does not hide what reads the user's files: that has a
        // budget of its own.
        let secret = Record {
            time: SystemTime::now(),
            resource: "path",
            action: "file_read",
            target: "~/docs/secret".into(),
            decision: Cow::Borrowed("allowed"),
            bytes: Some(5),
            significant: true,
            same_as: Some(AuditLog::identity("file_read", "/home/u/docs/secret")),
            prompt: None,
        };
        // Rereading one granted variable spends nothing: repeats are counted.
        let variable = Record {
            time: SystemTime::now(),
            resource: "env",
            action: "env_get",
            target: "EDITOR".into(),
            decision: Cow::Borrowed("allowed"),
            bytes: None,
            significant: true,
            same_as: Some(AuditLog::identity("env_get", "EDITOR")),
            prompt: None,
        };
        log.record_all(&vec![variable; 1000]);
        log.record_all(std::slice::from_ref(&secret));
        log.finish();
        // A record that comes after the end is written as it is.
        log.record("path", "file_exists", "~/late", "allowed", None);
        let entries = read(&path, None).unwrap();
        assert_eq!(entries[0].target, "~/secret");
        assert!(
            entries
                .iter()
                .any(|entry| entry.action == "budget" && entry.decision == "counted"),
            "the log says why entries stop"
        );
        // Every request is accounted for: one by one, or in a sum.
        let one_by_one = entries
            .iter()
            .filter(|entry| entry.session == "flood" && entry.target.starts_with("~/f"))
            .count() as u64;
        let sums: Vec<&Entry> = entries
            .iter()
            .filter(|entry| entry.target.contains("counted, not logged one by one"))
            .collect();
        let kinds: std::collections::BTreeSet<(&str, &str)> = sums
            .iter()
            .map(|entry| (entry.action.as_str(), entry.decision.as_str()))
            .collect();
        assert_eq!(
            kinds.len(),
            5,
            "read/exists x allowed/denied, env: {sums:?}"
        );
        let counted: u64 = sums
            .iter()
            .filter(|entry| entry.action != "env_get")
            .map(|entry| counted_requests(&entry.target))
            .sum();
        assert_eq!(one_by_one + counted, 5000);
        assert!(entries.iter().any(|entry| entry.target == "~/docs/secret"));
        let editor: Vec<&Entry> = entries
            .iter()
            .filter(|entry| entry.action == "env_get")
            .collect();
        assert_eq!(editor[0].target, "EDITOR");
        let reread: u64 = editor[1..]
            .iter()
            .map(|entry| counted_requests(&entry.target))
            .sum();
        assert_eq!(reread, 999, "{editor:?}");
        assert!(entries.iter().any(|entry| entry.target == "~/late"));
        let read_bytes: u64 = entries
            .iter()
            .filter(|entry| entry.session == "flood" && entry.action == "file_read")
            .filter_map(|entry| entry.bytes)
            .sum();
        assert_eq!(read_bytes, 2500 * 10 + 5);
        // Finishing again adds nothing.
        log.finish();
        assert_eq!(read(&path, None).unwrap().len(), entries.len());
    }

    #[test]
    fn clients_of_one_authority_rotate_its_log_once_between_them() {
        // Separate logs of one file: separate client processes.
        const CLIENTS: usize = 8;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.log");
        let lines = |path: &Path| {
            std::fs::read(path)
                .map(|bytes| bytes.iter().filter(|b| **b == b'\n').count())
                .unwrap_or(0)
        };
        for round in 0..40 {
            let _ = std::fs::remove_file(rotated(&path));
            // Just under the limit in whole lines: the next append rotates.
            let filler = format!("{}\n", "x".repeat(1023));
            let full = filler.repeat(MAX_LOG_BYTES as usize / filler.len() + 1);
            std::fs::write(&path, &full).unwrap();
            let before = lines(&path);
            let start = Arc::new(std::sync::Barrier::new(CLIENTS));
            let writers: Vec<_> = (0..CLIENTS)
                .map(|_| {
                    let (log, start) = (AuditLog::new(path.clone()), start.clone());
                    std::thread::spawn(move || {
                        start.wait();
                        log.record("path", "file_read", "~/a", "allowed", None);
                    })
                })
                .collect();
            for writer in writers {
                writer.join().unwrap();
            }
            assert_eq!(
                lines(&rotated(&path)) + lines(&path),
                before + CLIENTS,
                "round {round}: lines were lost to a second rotation"
            );
        }
    }

    #[test]
    fn a_line_is_written_without_the_lock_when_another_holds_it_too_long() {
        use rustix::fs::{FlockOperation, flock};
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.log");
        // A stopped client holding the lock.
        let held = std::fs::File::create(lock_path(&path)).unwrap();
        flock(&held, FlockOperation::LockExclusive).unwrap();
        let log = AuditLog::new(path.clone());
        let started = std::time::Instant::now();
        log.record("path", "file_read", "~/a", "allowed", None);
        assert!(
            started.elapsed() >= LOCK_WAIT,
            "it did not wait for the lock"
        );
        assert_eq!(read(&path, None).unwrap().len(), 1);
        // Then it only tries, until it has the lock again.
        let started = std::time::Instant::now();
        log.record("path", "file_read", "~/b", "allowed", None);
        assert!(started.elapsed() < LOCK_WAIT, "it waited again");
        drop(held);
        log.record("path", "file_read", "~/c", "allowed", None);
        assert!(
            !log.lock_timed_out
                .load(std::sync::atomic::Ordering::Relaxed)
        );
        assert_eq!(read(&path, None).unwrap().len(), 3);
    }

    #[test]
    fn records_written_together_keep_their_order_and_times() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.log");
        let log = AuditLog::new(path.clone());
        log.set_session("s-2");
        let start = SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_700_000_000);
        let records: Vec<Record> = (0..3u64)
            .map(|i| Record {
                time: start + std::time::Duration::from_secs(i),
                resource: "path",
                action: "file_exists",
                target: format!("~/f{i}"),
                decision: Cow::Borrowed("allowed"),
                bytes: None,
                significant: false,
                same_as: None,
                prompt: None,
            })
            .collect();
        log.record_all(&records);
        log.record_all(&[]);
        let entries = read(&path, None).unwrap();
        let targets: Vec<&str> = entries.iter().map(|e| e.target.as_str()).collect();
        assert_eq!(targets, ["~/f0", "~/f1", "~/f2"]);
        assert_eq!(
            entries[2].time, "2023-11-14T22:13:22.000Z",
            "the time it happened"
        );
        assert!(entries.iter().all(|e| e.session == "s-2"));
    }

    /// Denials past the budget are summed apart by what the consent prompt
    /// made of them: a request the user refused is not one the policy
    /// denied, in the sums as one by one.
    #[test]
    fn sums_keep_what_the_prompt_made_of_a_denial() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.log");
        let mut log = AuditLog::new(path.clone());
        log.budgets = [0, 0];
        let record = |prompt: Option<&'static str>| Record {
            time: SystemTime::now(),
            resource: "path",
            action: "file_read",
            target: "~/secret".into(),
            decision: Cow::Borrowed("denied"),
            bytes: None,
            significant: false,
            same_as: None,
            prompt,
        };
        log.record_all(&[
            record(Some(PROMPT_REFUSED)),
            record(Some(PROMPT_REFUSED)),
            record(None),
            record(Some(PROMPT_UNANSWERED)),
        ]);
        log.finish();
        let sums: Vec<(String, Option<String>, String)> = read(&path, None)
            .unwrap()
            .into_iter()
            .filter(|entry| entry.action == "file_read")
            .map(|entry| (entry.decision, entry.prompt, entry.target))
            .collect();
        let sum = |prompt: Option<&str>, requests: u64| {
            (
                "denied".to_owned(),
                prompt.map(str::to_owned),
                format!(
                    "({requests} more requests of this session: counted, not logged one by one)"
                ),
            )
        };
        assert_eq!(
            sums,
            [
                sum(None, 1),
                sum(Some(PROMPT_REFUSED), 2),
                sum(Some(PROMPT_UNANSWERED), 1),
            ]
        );
    }

    #[test]
    fn what_is_counted_is_written_as_sums_before_the_end_too() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.log");
        let mut log = AuditLog::new(path.clone());
        log.budgets = [0, 0];
        let record = |target: &str| Record {
            time: SystemTime::now(),
            resource: "path",
            action: "dir_list",
            target: target.into(),
            decision: Cow::Borrowed("allowed"),
            bytes: None,
            significant: false,
            same_as: None,
            prompt: None,
        };
        log.record_all(&[record("~/a"), record("~/b")]);
        // Counted, not yet written: the first sums are due in a second.
        let sums = |path: &Path| {
            read(path, None)
                .unwrap()
                .into_iter()
                .filter(|entry| entry.target.contains("counted, not logged"))
                .count()
        };
        assert_eq!(sums(&path), 0);
        // As if that second had passed: the next record brings the sums
        // out, without the session's end (a killed client loses little).
        log.tally.lock().unwrap().next_sums = Some(std::time::Instant::now());
        log.record_all(&[record("~/c")]);
        assert_eq!(sums(&path), 1);
        let tally = log.tally.lock().unwrap();
        assert!(tally.counted.is_empty());
        assert_eq!(
            tally.sums_every,
            FIRST_SUMS_AFTER * 2,
            "the next wait is longer"
        );
    }
}
