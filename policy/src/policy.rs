//! The policy file of one authority (`authorities/<authority>/policy.toml`):
//! a human-editable TOML list of grants, loaded strictly and saved atomically.
//!
//! ```toml
//! storage_quota_mib = 2048  # optional: what storage/ may hold, at least 1 (1024 MiB by default)
//!
//! [[path]]
//! pattern = "~/reports/**"
//! access = "read-write"   # or "read", "write"
//! mode = "0644"           # optional ceiling for files created or chmodded
//!
//! [[env]]
//! name = "EDITOR"
//!
//! [[browser]]
//! target = "mailto"       # a scheme, or an origin such as "https://github.com"
//! ```
//!
//! A missing file is an empty policy. A corrupt file is an error naming the
//! file, line and column; it is never silently replaced.

use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use serde::{Deserialize, Serialize};

use crate::grant::{Action, BrowserTarget, EnvName, Grant, Mode, PathGrant};

/// The comment written at the top of every saved policy file.
pub const HEADER: &str = "\
# terminalwire entitlements for one authority.
# This file is edited by `terminalwire entitlement grant` and
# `terminalwire entitlement revoke`; you may also edit it by hand.
# Grants: [[path]] pattern/access/mode, [[env]] name, [[browser]] target.
# storage_quota_mib (before the grants): what storage/ may hold, in MiB.
";

/// What an authority's `storage/` may hold when its policy does not say
/// (`storage_quota_mib`), in MiB.
pub const DEFAULT_STORAGE_QUOTA_MIB: u64 = 1024;

/// The most `storage_quota_mib` may be: more MiB than a count of bytes holds.
pub const MAX_STORAGE_QUOTA_MIB: u64 = u64::MAX >> 20;

/// The grants of one authority.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Policy {
    /// What the authority's `storage/` may hold, in MiB;
    /// [`DEFAULT_STORAGE_QUOTA_MIB`] when unset. At least 1: a file that
    /// says 0 is refused on load, as `terminalwire entitlement quota`
    /// refuses it. (A plain value: TOML needs it before the tables.)
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "quota_mib"
    )]
    pub storage_quota_mib: Option<u64>,
    /// Path grants, in file order.
    #[serde(default, rename = "path", skip_serializing_if = "Vec::is_empty")]
    pub paths: Vec<PathGrant>,
    /// Granted environment variables.
    #[serde(default, rename = "env", skip_serializing_if = "Vec::is_empty")]
    pub env: Vec<EnvGrant>,
    /// Granted browser targets.
    #[serde(default, rename = "browser", skip_serializing_if = "Vec::is_empty")]
    pub browser: Vec<BrowserGrant>,
}

/// `storage_quota_mib`: a whole number of MiB, at least 1 and at most
/// [`MAX_STORAGE_QUOTA_MIB`]. A quota of 0
/// would refuse every write to `storage/`, which no one asks for by
/// writing 0: it is refused with the key's name, like the command refuses it.
fn quota_mib<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<Option<u64>, D::Error> {
    match u64::deserialize(deserializer)? {
        0 => Err(serde::de::Error::custom(
            "storage_quota_mib must be at least 1 (MiB): set a number of MiB, or remove \
             the line for the default of 1024",
        )),
        mib if mib > MAX_STORAGE_QUOTA_MIB => Err(serde::de::Error::custom(format!(
            "storage_quota_mib may be at most {MAX_STORAGE_QUOTA_MIB} (MiB): set a smaller \
             number, or remove the line for the default of 1024"
        ))),
        mib => Ok(Some(mib)),
    }
}

/// An `[[env]]` entry.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EnvGrant {
    /// The variable's name.
    pub name: EnvName,
}

/// A `[[browser]]` entry.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BrowserGrant {
    /// The scheme or origin.
    pub target: BrowserTarget,
}

/// What [`Policy::grant`] changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GrantOutcome {
    /// A new grant was added.
    Added,
    /// An existing grant was widened or its mode changed.
    Updated,
    /// The policy already had it.
    Unchanged,
}

/// Why a policy file cannot be loaded or saved.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PolicyError {
    /// The file exists but cannot be read.
    #[error("cannot read policy file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        source: io::Error,
    },
    /// The file is not a valid policy.
    #[error("{}: {message}", location(path, *line, *column))]
    Parse {
        /// The file.
        path: PathBuf,
        /// 1-based line of the error, when known.
        line: Option<usize>,
        /// 1-based column (in characters) of the error, when known.
        column: Option<usize>,
        /// What is wrong.
        message: String,
    },
    /// The policy cannot be turned into TOML.
    #[error("cannot serialise the policy for {path}: {message}")]
    Serialize {
        /// The file it was meant for.
        path: PathBuf,
        /// What went wrong.
        message: String,
    },
    /// The file (or its folder) cannot be written.
    #[error("cannot write policy file {path}: {source}")]
    Write {
        /// The file or folder.
        path: PathBuf,
        /// The underlying error.
        source: io::Error,
    },
    /// The lock of the file cannot be taken: it cannot be made, or another
    /// client held it for longer than [`LOCK_WAIT`].
    #[error("cannot lock policy file {path} (lock file {lock}): {source}")]
    Lock {
        /// The policy file.
        path: PathBuf,
        /// Its lock file.
        lock: PathBuf,
        /// The underlying error (`WouldBlock` when another held it too long).
        source: io::Error,
    },
}

fn location(path: &Path, line: Option<usize>, column: Option<usize>) -> String {
    match (line, column) {
        (Some(l), Some(c)) => format!("{}:{l}:{c}", path.display()),
        (Some(l), None) => format!("{}:{l}", path.display()),
        _ => path.display().to_string(),
    }
}

impl Policy {
    /// What the authority's `storage/` may hold, in bytes.
    pub fn storage_quota_bytes(&self) -> u64 {
        self.storage_quota_mib
            .unwrap_or(DEFAULT_STORAGE_QUOTA_MIB)
            .saturating_mul(1 << 20)
    }

    /// Load a policy file; a missing file is an empty policy.
    pub fn load(path: &Path) -> Result<Policy, PolicyError> {
        match read_own_file(path, MAX_POLICY_FILE) {
            Ok(Some(text)) => Policy::from_toml(&text, path),
            Ok(None) => Ok(Policy::default()),
            Err(source) => Err(PolicyError::Read {
                path: path.to_path_buf(),
                source,
            }),
        }
    }

    /// Parse policy text; `path` is only used in errors.
    pub fn from_toml(text: &str, path: &Path) -> Result<Policy, PolicyError> {
        let mut policy: Policy = toml::from_str(text).map_err(|e| {
            let (line, column) = match e.span() {
                Some(span) => {
                    let (l, c) = line_column(text, span.start);
                    (Some(l), Some(c))
                }
                None => (None, None),
            };
            PolicyError::Parse {
                path: path.to_path_buf(),
                line,
                column,
                message: e.message().trim().to_owned(),
            }
        })?;
        policy.merge_repeated_paths();
        Ok(policy)
    }

    /// One grant per path pattern, as [`grant`](Self::grant) keeps them: a
    /// file edited by hand may list a pattern twice, and a revoke or a
    /// narrower mode must apply to all of it. Merged as the grants were
    /// enforced: accesses united, ceilings united.
    fn merge_repeated_paths(&mut self) {
        let mut merged: Vec<PathGrant> = Vec::with_capacity(self.paths.len());
        for grant in self.paths.drain(..) {
            match merged.iter_mut().find(|kept| kept.pattern == grant.pattern) {
                None => merged.push(grant),
                Some(kept) => {
                    kept.access = kept.access.union(grant.access);
                    kept.mode = match (kept.mode, grant.mode) {
                        (None, None) => None,
                        (a, b) => {
                            let bits = a.unwrap_or(Mode::DEFAULT_FILE).bits()
                                | b.unwrap_or(Mode::DEFAULT_FILE).bits();
                            Mode::new(bits)
                        }
                    };
                }
            }
        }
        self.paths = merged;
    }

    /// The file's text: [`HEADER`] then the grants.
    pub fn to_toml(&self, path: &Path) -> Result<String, PolicyError> {
        let body = toml::to_string(self).map_err(|e| PolicyError::Serialize {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
        Ok(format!("{HEADER}\n{body}"))
    }

    /// Save atomically: create the folder (mode 0700) if needed, write a
    /// temporary file (mode 0600) beside `path`, fsync it, rename it over
    /// `path`, then fsync the folder.
    pub fn save(&self, path: &Path) -> Result<(), PolicyError> {
        let text = self.to_toml(path)?;
        write_private_atomically(path, text.as_bytes()).map_err(|source| PolicyError::Write {
            path: path.to_path_buf(),
            source,
        })
    }

    /// Changes the policy file at `path` with `change`, as one step among
    /// other clients changing it: under [`Policy::lock`], the file is loaded
    /// again, changed and saved (atomically, only when `change` changed
    /// it). A load, change and save without the lock lost updates: two
    /// grants at once kept one of them, and a session saving an "always"
    /// grant undid a revoke made meanwhile.
    ///
    /// `change` may run twice: first on the file as it is, without the lock;
    /// when that changes nothing (or fails), that is the outcome, and
    /// nothing is locked or created (a revoke of what is not granted makes
    /// no folder). Otherwise it runs again under the lock on the file as it
    /// is then. Returns the policy as saved and what `change` returned.
    pub fn update<T, E>(
        path: &Path,
        mut change: impl FnMut(&mut Policy) -> Result<T, E>,
    ) -> Result<(Policy, T), E>
    where
        E: From<PolicyError>,
    {
        let mut policy = Policy::load(path)?;
        let before = policy.clone();
        let outcome = change(&mut policy)?;
        if policy == before {
            return Ok((policy, outcome));
        }
        let _locked = Policy::lock(path)?;
        let mut policy = Policy::load(path)?;
        let before = policy.clone();
        let outcome = change(&mut policy)?;
        if policy != before {
            policy.save(path)?;
        }
        Ok((policy, outcome))
    }

    /// Locks the policy file at `path` against other clients changing it,
    /// until the returned lock is dropped: an exclusive `flock` of
    /// `<path>.lock` beside it (created, mode 0600, with its folder, 0700).
    /// Waits at most [`LOCK_WAIT`] for another client to release it.
    /// Saving does not take it: a change is a load, a change and a save
    /// made under it ([`Policy::update`]).
    pub fn lock(path: &Path) -> Result<PolicyLock, PolicyError> {
        use rustix::fs::{FlockOperation, flock};
        use std::os::unix::fs::OpenOptionsExt;
        let lock = lock_path(path);
        let failed = |source: io::Error| PolicyError::Lock {
            path: path.to_path_buf(),
            lock: lock.clone(),
            source,
        };
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            create_private_dirs(dir).map_err(failed)?;
        }
        let file = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32)
            .open(&lock)
            .map_err(failed)?;
        let started = std::time::Instant::now();
        loop {
            match flock(&file, FlockOperation::NonBlockingLockExclusive) {
                Ok(()) => return Ok(PolicyLock { _file: file }),
                Err(rustix::io::Errno::WOULDBLOCK | rustix::io::Errno::INTR)
                    if started.elapsed() < LOCK_WAIT =>
                {
                    std::thread::sleep(std::time::Duration::from_millis(2));
                }
                Err(rustix::io::Errno::WOULDBLOCK) => {
                    return Err(failed(io::Error::new(
                        io::ErrorKind::WouldBlock,
                        format!(
                            "another terminalwire client has held it for over {} s; try again",
                            LOCK_WAIT.as_secs()
                        ),
                    )));
                }
                Err(error) => return Err(failed(error.into())),
            }
        }
    }

    /// Add a grant. The same pattern granted again merges: accesses are
    /// united and a given mode replaces the old one. Names and targets are
    /// never duplicated.
    pub fn grant(&mut self, grant: Grant) -> GrantOutcome {
        match grant {
            Grant::Path(new) => {
                let Some(old) = self.paths.iter_mut().find(|g| g.pattern == new.pattern) else {
                    self.paths.push(new);
                    return GrantOutcome::Added;
                };
                let before = old.clone();
                old.access = old.access.union(new.access);
                if new.mode.is_some() {
                    old.mode = new.mode;
                }
                if *old == before {
                    GrantOutcome::Unchanged
                } else {
                    GrantOutcome::Updated
                }
            }
            Grant::Env(name) => {
                if self.env.iter().any(|g| g.name == name) {
                    GrantOutcome::Unchanged
                } else {
                    self.env.push(EnvGrant { name });
                    GrantOutcome::Added
                }
            }
            Grant::Browser(target) => {
                if self.browser.iter().any(|g| g.target == target) {
                    GrantOutcome::Unchanged
                } else {
                    self.browser.push(BrowserGrant { target });
                    GrantOutcome::Added
                }
            }
        }
    }

    /// Take a grant away; true when anything was removed. For a path the
    /// pattern must be the same text; revoking `write` from a `read-write`
    /// grant leaves a `read` grant (the mode of the revoke is ignored), and
    /// forgets its mode ceiling: a later `write` grant without `--mode`
    /// gets the default ceiling, not the one the user took away.
    pub fn revoke(&mut self, grant: &Grant) -> bool {
        match grant {
            Grant::Path(gone) => {
                let Some(i) = self.paths.iter().position(|g| g.pattern == gone.pattern) else {
                    return false;
                };
                let old = self.paths[i].access;
                match old.without(gone.access) {
                    None => {
                        self.paths.remove(i);
                        true
                    }
                    Some(left) if left != old => {
                        self.paths[i].access = left;
                        if !left.allows(Action::Write) {
                            // A ceiling for files written: none are now.
                            self.paths[i].mode = None;
                        }
                        true
                    }
                    Some(_) => false,
                }
            }
            Grant::Env(name) => {
                let before = self.env.len();
                self.env.retain(|g| g.name != *name);
                self.env.len() != before
            }
            Grant::Browser(target) => {
                let before = self.browser.len();
                self.browser.retain(|g| g.target != *target);
                self.browser.len() != before
            }
        }
    }

    /// True when the policy grants nothing.
    pub fn is_empty(&self) -> bool {
        self.paths.is_empty() && self.env.is_empty() && self.browser.is_empty()
    }
}

/// The lock of a policy file ([`Policy::lock`]), released when dropped.
#[derive(Debug)]
pub struct PolicyLock {
    _file: std::fs::File,
}

/// How long [`Policy::lock`] waits for another client to release the lock:
/// far longer than a load, change and save take.
pub const LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

/// The lock file of the policy file at `path`: `<path>.lock`.
pub fn lock_path(path: &Path) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(".lock");
    PathBuf::from(name)
}

/// 1-based line and column (in characters) of a byte offset.
fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let mut offset = offset.min(text.len());
    while !text.is_char_boundary(offset) {
        offset -= 1;
    }
    let before = &text[..offset];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let column = before[line_start..].chars().count() + 1;
    (line, column)
}

/// Most bytes a policy file may hold: far more than any hand-kept list of
/// grants, and a bound on what a corrupt file makes the client read.
pub const MAX_POLICY_FILE: u64 = 4 << 20;

/// Reads one of the client's own small text files (a policy, a pinned
/// identity, a key, a launcher): `None` when there is none. What is not a
/// regular file is refused before it is read (a folder; a FIFO, whose open
/// would wait for a writer; a device such as `/dev/zero` that never ends),
/// and so is a file over `max` bytes or one that is not UTF-8: a bad file
/// gives an error, never a hang or a read of gigabytes.
pub fn read_own_file(path: &Path, max: u64) -> io::Result<Option<String>> {
    match read_own_file_bytes(path, max)? {
        Some(bytes) => String::from_utf8(bytes)
            .map(Some)
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "it is not UTF-8 text")),
        None => Ok(None),
    }
}

/// [`read_own_file`], for bytes that need not be text.
pub fn read_own_file_bytes(path: &Path, max: u64) -> io::Result<Option<Vec<u8>>> {
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;
    let file = match std::fs::OpenOptions::new()
        .read(true)
        // A FIFO opens at once instead of waiting for a writer; the check
        // below then refuses it.
        .custom_flags(rustix::fs::OFlags::NONBLOCK.bits() as i32)
        .open(path)
    {
        Ok(file) => file,
        Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(error) => return Err(error),
    };
    let meta = file.metadata()?;
    if !meta.is_file() {
        let kind = if meta.is_dir() {
            "a folder"
        } else {
            "not a regular file"
        };
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("it is {kind}"),
        ));
    }
    let too_large = |size: String| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("it is {size} bytes, more than the {max} it may be"),
        )
    };
    if meta.len() > max {
        return Err(too_large(meta.len().to_string()));
    }
    let mut bytes = Vec::new();
    // Bounded again: the file may grow after the check.
    file.take(max + 1).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > max {
        return Err(too_large(format!("over {max}")));
    }
    Ok(Some(bytes))
}

/// Writes a file only its owner can read, atomically: the folder is
/// created (0700) if needed, `bytes` go to a temporary file (0600) beside
/// `path`, which is synced and renamed over `path`, then the folder is
/// synced. On failure the temporary file is removed and `path` is untouched.
/// The client keeps its policy files, pins and keys this way.
pub fn write_private_atomically(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    create_private_dirs(dir)?;
    let tmp = temp_path(path);
    let result = write_new_private(&tmp, bytes).and_then(|()| std::fs::rename(&tmp, path));
    if let Err(error) = result {
        let _ = std::fs::remove_file(&tmp);
        return Err(error);
    }
    sync_dir(dir)
}

/// Like [`write_private_atomically`], but only when no file is at `path`:
/// false (and nothing written) when one is. Two processes doing this at
/// once: one file wins whole, the other learns it lost (a hard link of the
/// finished temporary file, which fails when the name exists).
pub fn write_private_new(path: &Path, bytes: &[u8]) -> io::Result<bool> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    create_private_dirs(dir)?;
    let tmp = temp_path(path);
    let linked = write_new_private(&tmp, bytes).and_then(|()| std::fs::hard_link(&tmp, path));
    let _ = std::fs::remove_file(&tmp);
    match linked {
        Ok(()) => sync_dir(dir).map(|()| true),
        Err(error) if error.kind() == io::ErrorKind::AlreadyExists => Ok(false),
        Err(error) => Err(error),
    }
}

fn temp_path(path: &Path) -> PathBuf {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let name = path
        .file_name()
        .map_or_else(|| "policy".into(), |n| n.to_string_lossy().into_owned());
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    path.with_file_name(format!(".{name}.{}.{n}.tmp", std::process::id()))
}

fn create_private_dirs(dir: &Path) -> io::Result<()> {
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
    builder.create(dir)
}

fn write_new_private(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options.open(path)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        // The umask can only remove bits; make sure of the exact mode.
        file.set_permissions(std::fs::Permissions::from_mode(0o600))?;
    }
    file.write_all(bytes)?;
    file.sync_all()
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    #[cfg(unix)]
    std::fs::File::open(dir)?.sync_all()?;
    #[cfg(not(unix))]
    let _ = dir;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::grant::{Access, Mode, PathPattern};

    /// A file edited by hand that lists a pattern twice: a revoke takes
    /// all of it away, and a narrower mode applies to all of it (only the
    /// first entry changed, the second stayed enforced).
    #[test]
    fn a_path_pattern_listed_twice_is_one_grant() {
        let text = "[[path]]\npattern = \"~/docs/**\"\naccess = \"read\"\n\n\
                    [[path]]\npattern = \"~/docs/**\"\naccess = \"write\"\nmode = \"0666\"\n";
        let mut policy = Policy::from_toml(text, Path::new("policy.toml")).unwrap();
        assert_eq!(policy.paths.len(), 1, "{:?}", policy.paths);
        assert_eq!(policy.paths[0].access, Access::ReadWrite);
        assert_eq!(policy.paths[0].mode, Mode::new(0o666));
        let pattern = PathPattern::parse("~/docs/**").unwrap();
        policy.grant(Grant::Path(PathGrant {
            pattern: pattern.clone(),
            access: Access::Write,
            mode: Mode::new(0o600),
        }));
        assert!(
            policy.paths.iter().all(|g| g.mode == Mode::new(0o600)),
            "{:?}",
            policy.paths
        );
        assert!(policy.revoke(&Grant::Path(PathGrant {
            pattern,
            access: Access::ReadWrite,
            mode: None,
        })));
        assert!(policy.paths.is_empty(), "still granted: {:?}", policy.paths);
    }

    #[test]
    fn own_files_are_read_only_when_they_are_small_regular_text_files() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("file");
        assert!(read_own_file(&path, 10).unwrap().is_none());
        std::fs::write(&path, "0123456789").unwrap();
        assert_eq!(
            read_own_file(&path, 10).unwrap().as_deref(),
            Some("0123456789")
        );
        let refused = |path: &Path, max| {
            let error = read_own_file(path, max).unwrap_err();
            assert_eq!(error.kind(), io::ErrorKind::InvalidData, "{error}");
            error.to_string()
        };
        assert!(refused(&path, 9).contains("10 bytes, more than the 9"));
        std::fs::write(&path, b"\xff").unwrap();
        assert!(refused(&path, 10).contains("not UTF-8"));
        assert_eq!(read_own_file_bytes(&path, 10).unwrap(), Some(vec![0xff]));
        assert!(refused(dir.path(), 10).contains("a folder"));
        assert!(refused(Path::new("/dev/zero"), 10).contains("not a regular file"));
        // A FIFO with no writer: opening it for reading would wait forever.
        let fifo = dir.path().join("fifo");
        rustix::fs::mknodat(
            rustix::fs::CWD,
            &fifo,
            rustix::fs::FileType::Fifo,
            rustix::fs::Mode::from_raw_mode(0o600),
            0,
        )
        .unwrap();
        let (done, read) = std::sync::mpsc::channel();
        std::thread::spawn(move || done.send(read_own_file(&fifo, 10).map_err(|e| e.to_string())));
        let outcome = read
            .recv_timeout(std::time::Duration::from_secs(30))
            .expect("reading a FIFO hung");
        assert!(outcome.unwrap_err().contains("not a regular file"));
    }

    fn path_grant(pattern: &str, access: Access, mode: Option<u32>) -> Grant {
        Grant::Path(PathGrant {
            pattern: PathPattern::parse(pattern).unwrap(),
            access,
            mode: mode.map(|m| Mode::new(m).unwrap()),
        })
    }

    fn sample() -> Policy {
        let mut p = Policy::default();
        p.grant(path_grant("~/reports/**", Access::ReadWrite, Some(0o640)));
        p.grant(path_grant("/tmp/*.txt", Access::Read, None));
        p.grant(Grant::Env(EnvName::parse("EDITOR").unwrap()));
        p.grant(Grant::Browser(BrowserTarget::parse("mailto").unwrap()));
        p.grant(Grant::Browser(
            BrowserTarget::parse("https://github.com").unwrap(),
        ));
        p
    }

    #[test]
    fn round_trip() {
        let tmp = tempfile::tempdir().unwrap();
        let file = tmp.path().join("a/b/policy.toml");
        let policy = sample();
        policy.save(&file).unwrap();
        let text = std::fs::read_to_string(&file).unwrap();
        assert!(text.starts_with(HEADER), "{text}");
        assert!(text.contains("pattern = \"~/reports/**\""), "{text}");
        assert!(text.contains("mode = \"0640\""), "{text}");
        assert_eq!(Policy::load(&file).unwrap(), policy);
    }

    /// A quota of more MiB than bytes can count is refused from a file,
    /// naming the most, as the command refuses it (it was taken as the
    /// most, silently).
    #[test]
    fn a_storage_quota_above_the_maximum_is_refused_by_name() {
        let path = Path::new("/h/authorities/example.com/policy.toml");
        let text = format!("storage_quota_mib = {}\n", MAX_STORAGE_QUOTA_MIB + 1);
        let message = Policy::from_toml(&text, path).unwrap_err().to_string();
        assert!(
            message.contains("storage_quota_mib may be at most 17592186044415"),
            "{message}"
        );
        let text = format!("storage_quota_mib = {MAX_STORAGE_QUOTA_MIB}\n");
        let policy = Policy::from_toml(&text, path).unwrap();
        assert_eq!(policy.storage_quota_bytes(), MAX_STORAGE_QUOTA_MIB << 20);
    }

    #[test]
    fn the_storage_quota_is_saved_before_the_grants_and_defaults_to_1024_mib() {
        let tmp = tempfile::tempdir().unwrap();
        let file = tmp.path().join("policy.toml");
        assert_eq!(Policy::default().storage_quota_bytes(), 1024 << 20);
        let policy = Policy {
            storage_quota_mib: Some(3),
            ..sample()
        };
        policy.save(&file).unwrap();
        let text = std::fs::read_to_string(&file).unwrap();
        let quota = text.find("storage_quota_mib = 3").expect(&text);
        assert!(quota < text.find("\n[[path]]").unwrap(), "{text}");
        let loaded = Policy::load(&file).unwrap();
        assert_eq!(loaded, policy);
        assert_eq!(loaded.storage_quota_bytes(), 3 << 20);
    }

    /// A quota of 0 MiB, which `terminalwire entitlement quota` refuses,
    /// is refused from a file edited by hand too, naming the file, line
    /// and key (it was taken: every write to storage/ refused).
    #[test]
    fn a_storage_quota_of_zero_is_refused_by_name() {
        let path = Path::new("/h/authorities/example.com/policy.toml");
        let text = "# mine\nstorage_quota_mib = 0\n";
        let error = Policy::from_toml(text, path).unwrap_err();
        let message = error.to_string();
        assert!(
            message.starts_with("/h/authorities/example.com/policy.toml:2:"),
            "{message}"
        );
        assert!(message.contains("storage_quota_mib"), "{message}");
        assert!(message.contains("at least 1"), "{message}");
        let one = Policy::from_toml("storage_quota_mib = 1\n", path).unwrap();
        assert_eq!(one.storage_quota_bytes(), 1 << 20);
    }

    #[test]
    fn updates_at_once_are_all_kept() {
        let tmp = tempfile::tempdir().unwrap();
        let file = tmp.path().join("authorities/example.com/policy.toml");
        let threads: Vec<_> = (0..8)
            .map(|t| {
                let file = file.clone();
                std::thread::spawn(move || {
                    for i in 0..10 {
                        let name = EnvName::parse(&format!("VAR_{t}_{i}")).unwrap();
                        Policy::update(&file, |policy| {
                            Ok::<_, PolicyError>(policy.grant(Grant::Env(name.clone())))
                        })
                        .unwrap();
                    }
                })
            })
            .collect();
        for thread in threads {
            thread.join().unwrap();
        }
        assert_eq!(Policy::load(&file).unwrap().env.len(), 80);
    }

    #[test]
    fn an_update_waits_for_the_lock_and_changes_what_is_saved_then() {
        let tmp = tempfile::tempdir().unwrap();
        let file = tmp.path().join("authorities/example.com/policy.toml");
        let editor = Grant::Env(EnvName::parse("EDITOR").unwrap());
        let pager = Grant::Env(EnvName::parse("PAGER").unwrap());
        // Another client is changing the file: it revokes EDITOR.
        let mut policy = Policy::default();
        policy.grant(editor.clone());
        policy.save(&file).unwrap();
        let held = Policy::lock(&file).unwrap();
        let (done, finished) = std::sync::mpsc::channel();
        let waiting = {
            let file = file.clone();
            std::thread::spawn(move || {
                let outcome = Policy::update(&file, |policy| {
                    Ok::<_, PolicyError>(policy.grant(pager.clone()))
                });
                done.send(()).unwrap();
                outcome
            })
        };
        assert!(
            finished
                .recv_timeout(std::time::Duration::from_millis(200))
                .is_err(),
            "the update did not wait for the lock"
        );
        policy.revoke(&editor);
        policy.save(&file).unwrap();
        drop(held);
        let (saved, outcome) = waiting.join().unwrap().unwrap();
        assert_eq!(outcome, GrantOutcome::Added);
        // The revoke is kept: the update loaded the file under the lock.
        assert_eq!(Policy::load(&file).unwrap(), saved);
        let names: Vec<_> = saved.env.iter().map(|g| g.name.as_str()).collect();
        assert_eq!(names, ["PAGER"]);
        assert!(lock_path(&file).is_file());
    }

    #[test]
    fn an_update_that_changes_nothing_creates_nothing() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("authorities/example.com");
        let file = dir.join("policy.toml");
        let editor = Grant::Env(EnvName::parse("EDITOR").unwrap());
        let (policy, revoked) =
            Policy::update(&file, |policy| Ok::<_, PolicyError>(policy.revoke(&editor))).unwrap();
        assert!(!revoked && policy.is_empty());
        assert!(!dir.exists(), "a folder was made for nothing");
    }

    #[test]
    fn missing_file_is_empty() {
        let tmp = tempfile::tempdir().unwrap();
        assert!(
            Policy::load(&tmp.path().join("policy.toml"))
                .unwrap()
                .is_empty()
        );
    }

    #[cfg(unix)]
    #[test]
    fn save_is_atomic_and_private() {
        use std::os::unix::fs::PermissionsExt;
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("authorities/example.com");
        let file = dir.join("policy.toml");
        sample().save(&file).unwrap();
        // Overwrite an existing, world-readable file: the result is 0600.
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
        Policy::default().save(&file).unwrap();
        let mode = std::fs::metadata(&file).unwrap().permissions().mode() & 0o7777;
        assert_eq!(mode, 0o600);
        let dir_mode = std::fs::metadata(&dir).unwrap().permissions().mode() & 0o7777;
        assert_eq!(dir_mode, 0o700);
        assert!(Policy::load(&file).unwrap().is_empty());
        // No temporary file is left behind.
        let names: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["policy.toml"]);
    }

    #[test]
    fn corrupt_file_names_file_and_line() {
        let tmp = tempfile::tempdir().unwrap();
        let file = tmp.path().join("policy.toml");
        std::fs::write(
            &file,
            "# header\n[[path]]\npattern = \"~/ok/**\"\naccess = \"read\"\n\n[[path]]\npattern = \"relative/**\"\naccess = \"read\"\n",
        )
        .unwrap();
        let err = Policy::load(&file).unwrap_err();
        let PolicyError::Parse { path, line, .. } = &err else {
            panic!("{err:?}");
        };
        assert_eq!(path, &file);
        assert_eq!(*line, Some(7));
        let shown = err.to_string();
        assert!(
            shown.starts_with(&format!("{}:7:", file.display())),
            "{shown}"
        );
        assert!(shown.contains("relative/**"), "{shown}");

        std::fs::write(
            &file,
            "[[path]]\npattern = \"~/x\"\naccess = \"read\"\nacess = 1\n",
        )
        .unwrap();
        let err = Policy::load(&file).unwrap_err();
        assert!(
            matches!(err, PolicyError::Parse { line: Some(4), .. }),
            "{err}"
        );

        std::fs::write(&file, "[[path]\n").unwrap();
        let err = Policy::load(&file).unwrap_err();
        assert!(
            matches!(err, PolicyError::Parse { line: Some(1), .. }),
            "{err}"
        );
        // The corrupt file is left as it was.
        assert_eq!(std::fs::read_to_string(&file).unwrap(), "[[path]\n");
    }

    #[test]
    fn granting_twice_merges() {
        let mut p = Policy::default();
        assert_eq!(
            p.grant(path_grant("~/r/**", Access::Read, None)),
            GrantOutcome::Added
        );
        assert_eq!(
            p.grant(path_grant("~/r/**", Access::Read, None)),
            GrantOutcome::Unchanged
        );
        assert_eq!(
            p.grant(path_grant("~/r/**", Access::Write, None)),
            GrantOutcome::Updated
        );
        assert_eq!(p.paths.len(), 1);
        assert_eq!(p.paths[0].access, Access::ReadWrite);
        assert_eq!(
            p.grant(path_grant("~/r/**", Access::Read, Some(0o600))),
            GrantOutcome::Updated
        );
        assert_eq!(p.paths[0].mode, Mode::new(0o600));
        let editor = Grant::Env(EnvName::parse("EDITOR").unwrap());
        assert_eq!(p.grant(editor.clone()), GrantOutcome::Added);
        assert_eq!(p.grant(editor), GrantOutcome::Unchanged);
        let gh = |t| Grant::Browser(BrowserTarget::parse(t).unwrap());
        assert_eq!(p.grant(gh("https://github.com")), GrantOutcome::Added);
        assert_eq!(
            p.grant(gh("https://GITHUB.com:443/")),
            GrantOutcome::Unchanged
        );
        assert_eq!(p.env.len(), 1);
        assert_eq!(p.browser.len(), 1);
    }

    #[test]
    fn revoking_write_forgets_the_mode_ceiling() {
        let mut p = Policy::default();
        p.grant(path_grant("~/r/**", Access::ReadWrite, Some(0o777)));
        assert!(p.revoke(&path_grant("~/r/**", Access::Write, None)));
        assert_eq!((p.paths[0].access, p.paths[0].mode), (Access::Read, None));
        // Write granted again without a mode: the default, not 0777.
        p.grant(path_grant("~/r/**", Access::Write, None));
        assert_eq!(
            (p.paths[0].access, p.paths[0].mode),
            (Access::ReadWrite, None)
        );
        // Revoking read keeps the ceiling of what is still written.
        p.grant(path_grant("~/w/**", Access::ReadWrite, Some(0o600)));
        assert!(p.revoke(&path_grant("~/w/**", Access::Read, None)));
        assert_eq!(
            (p.paths[1].access, p.paths[1].mode),
            (Access::Write, Mode::new(0o600))
        );
    }

    #[test]
    fn revoke() {
        let mut p = sample();
        assert!(p.revoke(&path_grant("~/reports/**", Access::Write, None)));
        assert_eq!(p.paths[0].access, Access::Read);
        assert!(!p.revoke(&path_grant("~/reports/**", Access::Write, None)));
        assert!(p.revoke(&path_grant("~/reports/**", Access::ReadWrite, None)));
        assert!(!p.revoke(&path_grant("~/reports/**", Access::Read, None)));
        assert_eq!(p.paths.len(), 1);
        assert!(p.revoke(&Grant::Env(EnvName::parse("EDITOR").unwrap())));
        assert!(!p.revoke(&Grant::Env(EnvName::parse("EDITOR").unwrap())));
        assert!(p.revoke(&Grant::Browser(BrowserTarget::parse("mailto").unwrap())));
        assert_eq!(p.browser.len(), 1);
    }
}
