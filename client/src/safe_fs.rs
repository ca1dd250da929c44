//! File and directory operations on an already-checked path that never follow
//! a symlink.
//!
//! The policy layer hands the client a resolved path: absolute, normalised,
//! with every symlink of its existing prefix resolved. Between that check and
//! the use, something (a hostile server through another operation, another
//! process) could put a symlink in its way and redirect the operation outside
//! what was granted. So every function here walks the path from `/` one
//! component at a time through directory file descriptors opened with
//! `O_NOFOLLOW` (`O_PATH` on Linux, which only needs search permission), and
//! acts on the last component relative to its parent's descriptor with the
//! `*at` calls (`openat` with `O_NOFOLLOW`, `fstatat` with
//! `AT_SYMLINK_NOFOLLOW`, `unlinkat`, `mkdirat`, `renameat`).
//!
//! Since the path was canonical when it was checked, a symlink met anywhere on
//! the way means the disk changed since: that is [`FsError::SymlinkRace`],
//! which the caller reports as a denial. The exceptions are the operations
//! that act on a final symlink *itself* and never on what it points to:
//! [`metadata`] reports it as [`Kind::Symlink`] and [`delete_file`] removes the
//! link. Symlinks found inside a folder by [`list`] and [`delete_dir`] are
//! entries like any other, never followed.
//!
//! Paths must be absolute and free of `.` and `..` components
//! ([`FsError::InvalidPath`] otherwise). Everything is synchronous: callers
//! run it on a blocking thread.
//!
//! Errors name the path they are about: for a problem on the way (a missing
//! or non-directory or symlink component) that is the prefix up to that
//! component, otherwise the path that was asked for.

use std::collections::hash_map::RandomState;
use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::hash::BuildHasher;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use rustix::fd::{AsFd, BorrowedFd, OwnedFd};
use rustix::fs::{AtFlags, Dir, FileType, Mode, OFlags, Stat};
use rustix::io::Errno;
use terminalwire_policy::Sighting;

/// How deep [`delete_dir`] descends below the folder it deletes.
pub const MAX_DELETE_DEPTH: usize = 256;
/// How many entries [`delete_dir`] deletes at most, all levels together.
pub const MAX_DELETE_ENTRIES: usize = 100_000;
/// The mode of a file created by [`write_atomic`] when no mode is given.
pub const DEFAULT_FILE_MODE: u32 = 0o644;

/// The permission bits a file written by [`write_atomic`] or
/// [`StreamedWrite`] gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileMode {
    /// These bits (masked to `0o7777`), whether the file is new or not.
    Exactly(u32),
    /// A file being replaced keeps its permission bits as far as `ceiling`
    /// allows them and never setuid, setgid or sticky (as the kernel clears
    /// the first two when a file is written in place); a new file gets `new`.
    /// Both are decided when the write looks at its target, so a file
    /// deleted or created since the caller looked cannot widen the mode.
    Keep {
        /// The mode of a new file.
        new: u32,
        /// The most a kept mode may have.
        ceiling: u32,
    },
}

impl FileMode {
    /// Keep the plain permission bits of a file replaced, else
    /// [`DEFAULT_FILE_MODE`].
    pub const KEEP_OR_DEFAULT: FileMode = FileMode::Keep {
        new: DEFAULT_FILE_MODE,
        ceiling: 0o777,
    };

    /// The mode for a target that is `existing` (a regular file) or absent.
    fn for_target(self, existing: Option<&Stat>) -> u32 {
        match (self, existing) {
            (FileMode::Exactly(mode), _) => mode & PERMISSION_BITS,
            (FileMode::Keep { new, .. }, None) => new & PERMISSION_BITS,
            (FileMode::Keep { ceiling, .. }, Some(st)) => mode_bits(st) & 0o777 & ceiling,
        }
    }
}
/// The permission bits (including setuid, setgid and sticky) that modes keep.
const PERMISSION_BITS: u32 = 0o7777;
/// The longest file name (Linux's `NAME_MAX`), for temporary file names.
const NAME_MAX: usize = 255;
/// How many temporary names [`write_atomic`] tries before giving up.
const TEMP_ATTEMPTS: u32 = 16;

/// Why a file operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FsError {
    /// The path, or a folder on the way to it, does not exist.
    #[error("{} does not exist", path.display())]
    NotFound {
        /// What is missing.
        path: PathBuf,
    },
    /// Something already exists at the path.
    #[error("{} already exists", path.display())]
    AlreadyExists {
        /// The path.
        path: PathBuf,
    },
    /// The path is not a regular file (a folder, a device, a FIFO...).
    #[error("{} is not a regular file", path.display())]
    NotAFile {
        /// The path.
        path: PathBuf,
    },
    /// The path, or a component on the way to it, is not a folder.
    #[error("{} is not a folder", path.display())]
    NotADirectory {
        /// The path.
        path: PathBuf,
    },
    /// The folder is not empty.
    #[error("{} is not empty", path.display())]
    DirectoryNotEmpty {
        /// The folder.
        path: PathBuf,
    },
    /// A symlink was met where the checked path had none: the disk changed
    /// between the check and the use. The caller treats it as a denial.
    #[error("{} is a symlink that appeared after the path was checked", path.display())]
    SymlinkRace {
        /// The symlink.
        path: PathBuf,
    },
    /// The folder has more entries, or is deeper, than the limit.
    #[error("{} is too large: the limit is {limit}", path.display())]
    TooLarge {
        /// The folder.
        path: PathBuf,
        /// The limit that was exceeded (entries or depth).
        limit: u64,
    },
    /// The path is not one this module accepts.
    #[error("invalid path {}: {reason}", path.display())]
    InvalidPath {
        /// The path as given.
        path: PathBuf,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// The check given to [`delete_dir`] refused this entry; nothing was
    /// deleted.
    #[error("may not delete {}", path.display())]
    Denied {
        /// The refused entry.
        path: PathBuf,
    },
    /// A streamed write's unfinished file was deleted (by a request of the
    /// app, or by hand): its bytes would go where no one can see or count
    /// them.
    #[error("the unfinished new {} was deleted while it was being written", path.display())]
    WriteGone {
        /// The file being written.
        path: PathBuf,
    },
    /// Any other failure.
    #[error("{}: {source}", path.display())]
    Io {
        /// The path being worked on.
        path: PathBuf,
        /// The underlying error.
        source: io::Error,
    },
}

impl FsError {
    /// The path the error is about.
    pub fn path(&self) -> &Path {
        match self {
            FsError::NotFound { path }
            | FsError::AlreadyExists { path }
            | FsError::NotAFile { path }
            | FsError::NotADirectory { path }
            | FsError::DirectoryNotEmpty { path }
            | FsError::SymlinkRace { path }
            | FsError::TooLarge { path, .. }
            | FsError::InvalidPath { path, .. }
            | FsError::Denied { path }
            | FsError::WriteGone { path }
            | FsError::Io { path, .. } => path,
        }
    }
}

/// What kind of thing a path is (symlinks are not followed).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    /// A regular file.
    File,
    /// A folder.
    Dir,
    /// A symlink (the link itself).
    Symlink,
    /// Anything else: FIFO, socket, device.
    Other,
}

/// What [`metadata`] reports about a path (the path itself, not what a
/// symlink points to).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Metadata {
    /// What it is.
    pub kind: Kind,
    /// Its size in bytes.
    pub size: u64,
    /// Its permission bits, including setuid, setgid and sticky (`0o7777`).
    pub mode: u32,
    /// When its content last changed, in milliseconds since the Unix epoch.
    pub modified_unix_ms: i64,
}

/// One entry of a folder, from [`list`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// Its name (valid UTF-8; other names are skipped and counted).
    pub name: String,
    /// What it is (a symlink is reported as such, not followed).
    pub kind: Kind,
}

/// A folder's entries, from [`list`]. Iterating it yields the entries.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Listing {
    /// The entries whose names are valid UTF-8, sorted by name.
    pub entries: Vec<Entry>,
    /// How many entries were left out because their names are not valid
    /// UTF-8.
    pub skipped_non_utf8: usize,
}

impl IntoIterator for Listing {
    type Item = Entry;
    type IntoIter = std::vec::IntoIter<Entry>;

    fn into_iter(self) -> Self::IntoIter {
        self.entries.into_iter()
    }
}

/// Reads up to `max_len` bytes of the regular file at `path` from `offset`;
/// also returns true when the read reached the end of the file.
///
/// Anything but a regular file (folder, FIFO, socket, device) is
/// [`FsError::NotAFile`]; the type is checked before opening, and the file is
/// opened with `O_NONBLOCK | O_NOCTTY` and checked again, so a FIFO swapped in
/// cannot block the client.
pub fn read(path: &Path, offset: u64, max_len: usize) -> Result<(Vec<u8>, bool), FsError> {
    read_into(path, offset, max_len, Vec::new())
}

/// [`read`] into `buffer` (emptied first), grown only when it holds less
/// than the bytes to read.
///
/// A buffer the caller made on its own thread keeps the read's memory in
/// that thread's allocator arena: made on a blocking thread, each 512 KiB
/// chunk would land in that thread's own glibc arena, and every thread the
/// pool adds during a long read would keep its high-water mark (the client's
/// peak memory grew by 4–8 MiB from a 64 MiB to a 1 GiB file that way).
pub fn read_into(
    path: &Path,
    offset: u64,
    max_len: usize,
    mut bytes: Vec<u8>,
) -> Result<(Vec<u8>, bool), FsError> {
    let (parent, name) = open_parent(path)?;
    match stat_at(&parent, name, path)?.map(|st| kind_of(&st)) {
        None => return Err(FsError::NotFound { path: path.into() }),
        Some(Kind::File) => {}
        Some(Kind::Symlink) => return Err(FsError::SymlinkRace { path: path.into() }),
        Some(Kind::Dir | Kind::Other) => return Err(FsError::NotAFile { path: path.into() }),
    }
    let fd = open_file_at(
        &parent,
        name,
        OFlags::RDONLY | OFlags::NONBLOCK | OFlags::NOCTTY,
        path,
    )?;
    let mut file = File::from(fd);
    let size = ensure_regular(&file, path)?;
    file.seek(SeekFrom::Start(offset))
        .map_err(|source| io_error(path, source))?;
    // Sized to what the file holds now: growing from empty would copy a
    // big read several times over. A file that grows meanwhile still works.
    let expected = size.saturating_sub(offset).min(to_u64(max_len));
    bytes.clear();
    bytes.reserve(usize::try_from(expected).unwrap_or(max_len));
    let limit = u64::try_from(max_len).unwrap_or(u64::MAX);
    Read::by_ref(&mut file)
        .take(limit)
        .read_to_end(&mut bytes)
        .map_err(|source| io_error(path, source))?;
    let eof = if bytes.len() < max_len {
        true
    } else {
        // Exactly `max_len` bytes: the end is there only if nothing follows.
        let mut probe = [0u8; 1];
        loop {
            match file.read(&mut probe) {
                Ok(n) => break n == 0,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(source) => return Err(io_error(path, source)),
            }
        }
    };
    Ok((bytes, eof))
}

/// Replaces (or creates) the regular file at `path` with `bytes`, atomically.
///
/// The bytes go to a new temporary file in the same folder
/// (`.{name}.tw-XXXXXXXX.tmp`, created with `O_CREAT | O_EXCL | O_NOFOLLOW`),
/// which is synced, given its mode with `fchmod` (so the umask does not
/// matter) and renamed over `path`; the folder is then synced. On failure the
/// temporary file is removed.
///
/// `mode` says which permission bits the file gets ([`FileMode`]); the
/// caller is responsible for any ceiling on an exact mode or a new file's.
///
/// An existing folder, FIFO, socket or device at `path` is
/// [`FsError::NotAFile`] and is left alone. An existing symlink at `path` is
/// [`FsError::SymlinkRace`]: a checked path never ends in a symlink, so one
/// there appeared after the check. (Should one appear between that test and
/// the rename, the rename replaces the link itself, never its target.) The
/// new file belongs to the client's user, and hard links to the old file keep
/// the old content.
pub fn write_atomic(path: &Path, bytes: &[u8], mode: FileMode) -> Result<(), FsError> {
    let (parent, name) = open_parent(path)?;
    let existing = stat_at(&parent, name, path)?;
    let mode = match existing.as_ref().map(|st| (kind_of(st), st)) {
        None => mode.for_target(None),
        Some((Kind::File, st)) => mode.for_target(Some(st)),
        Some((Kind::Symlink, _)) => return Err(FsError::SymlinkRace { path: path.into() }),
        Some((Kind::Dir | Kind::Other, _)) => {
            return Err(FsError::NotAFile { path: path.into() });
        }
    };

    let (temp_name, fd) = create_temp(&parent, name, path)?;
    let mut temp = TempFile {
        parent: parent.as_fd(),
        name: Some(temp_name),
    };
    let mut file = File::from(fd);
    file.write_all(bytes)
        .map_err(|source| io_error(path, source))?;
    rustix::fs::fchmod(&file, to_mode(mode)).map_err(|e| map_errno(e, path))?;
    file.sync_all().map_err(|source| io_error(path, source))?;
    drop(file);

    let temp_name = temp.name.as_deref().unwrap_or_default();
    rustix::fs::renameat(&parent, temp_name, &parent, name).map_err(|e| match e {
        Errno::ISDIR | Errno::NOTEMPTY | Errno::EXIST => FsError::NotAFile { path: path.into() },
        e => map_errno(e, path),
    })?;
    temp.name = None;
    sync_dir(&parent, path)
}

/// An atomic write of unknown length in progress: a temporary file beside
/// the target that [`commit`](StreamedWrite::commit) renames over it. Dropped
/// without a commit, the temporary file is deleted and the target untouched.
#[derive(Debug)]
pub struct StreamedWrite {
    parent: OwnedFd,
    target: OsString,
    temp: Option<OsString>,
    file: File,
    /// The same temporary file opened for direct I/O, when its file system
    /// supports it: aligned chunks go to the disk without the page cache.
    direct: Option<DirectFile>,
    mode: u32,
    path: PathBuf,
}

/// A second descriptor of a [`StreamedWrite`]'s temporary file, opened with
/// `O_DIRECT`, and the alignments its file system asks of direct writes.
///
/// Why: the commit syncs the whole file to disk anyway, so a big write pays
/// for the disk either way; through the page cache it also pays a copy into
/// freshly allocated cache pages for every byte, which on some machines
/// (virtual ones that hand freed memory back to their host) costs more than
/// the disk. Direct writes skip that copy and leave the user's page cache
/// alone.
#[derive(Debug)]
#[cfg_attr(not(target_os = "linux"), allow(dead_code))]
struct DirectFile {
    file: File,
    /// Offsets and lengths must be multiples of this.
    offset_align: usize,
    /// The buffer's address must be a multiple of this.
    memory_align: usize,
    /// Cleared at the first error of a direct write: later chunks go
    /// through the page cache.
    usable: std::sync::atomic::AtomicBool,
    /// Bytes written directly, for tests.
    written: AtomicU64,
}

/// The smallest chunk written with direct I/O: below it the page cache's copy
/// costs little and a synchronous disk write more.
const MIN_DIRECT_WRITE: usize = 64 * 1024;
/// The largest alignment a file system may ask for that direct writes honour.
#[cfg_attr(not(target_os = "linux"), allow(dead_code))]
const MAX_DIRECT_ALIGN: usize = 64 * 1024;

impl StreamedWrite {
    /// Starts a write to `path`, with the same rules as [`write_atomic`] for
    /// what may be replaced and which mode the file gets.
    pub fn begin(path: &Path, mode: FileMode) -> Result<StreamedWrite, FsError> {
        let (parent, name) = open_parent(path)?;
        let existing = stat_at(&parent, name, path)?;
        let mode = match existing.as_ref().map(|st| (kind_of(st), st)) {
            None => mode.for_target(None),
            Some((Kind::File, st)) => mode.for_target(Some(st)),
            Some((Kind::Symlink, _)) => return Err(FsError::SymlinkRace { path: path.into() }),
            Some((Kind::Dir | Kind::Other, _)) => {
                return Err(FsError::NotAFile { path: path.into() });
            }
        };
        let target = name.to_os_string();
        let (temp, fd) = create_temp(&parent, name, path)?;
        let file = File::from(fd);
        // Private until committed, whatever the final mode.
        rustix::fs::fchmod(&file, to_mode(0o600)).map_err(|e| map_errno(e, path))?;
        let direct = DirectFile::open(&parent, &temp, &file);
        Ok(StreamedWrite {
            parent,
            target,
            temp: Some(temp),
            file,
            direct,
            mode,
            path: path.to_path_buf(),
        })
    }

    /// Whether the unfinished file was deleted (or replaced) since the write
    /// began: it can no longer be committed, and while it stays open it
    /// takes disk space that no folder listing (nor a quota) sees.
    pub fn is_gone(&self) -> Result<bool, FsError> {
        let stat = rustix::fs::fstat(&self.file).map_err(|e| map_errno(e, &self.path))?;
        Ok(stat.st_nlink == 0)
    }

    /// Writes `bytes` at `offset` of the new file (chunks may arrive in any
    /// order).
    pub fn write_at(&self, offset: u64, bytes: &[u8]) -> Result<(), FsError> {
        use std::os::unix::fs::FileExt;
        if self.is_gone()? {
            return Err(FsError::WriteGone {
                path: self.path.clone(),
            });
        }
        if let Some(direct) = &self.direct
            && direct.write_at(offset, bytes)
        {
            return Ok(());
        }
        self.file
            .write_all_at(bytes, offset)
            .map_err(|source| io_error(&self.path, source))?;
        start_writeback(&self.file, offset, bytes.len());
        Ok(())
    }

    /// How many bytes went to the disk with direct I/O so far.
    #[cfg(test)]
    fn direct_bytes(&self) -> Option<u64> {
        self.direct
            .as_ref()
            .map(|direct| direct.written.load(Ordering::Relaxed))
    }

    /// Syncs the new file, gives it its mode and renames it over the target.
    pub fn commit(mut self) -> Result<(), FsError> {
        let path = self.path.clone();
        rustix::fs::fchmod(&self.file, to_mode(self.mode)).map_err(|e| map_errno(e, &path))?;
        self.file
            .sync_all()
            .map_err(|source| io_error(&path, source))?;
        let temp = self.temp.take().unwrap_or_default();
        let renamed = rustix::fs::renameat(&self.parent, &temp, &self.parent, &self.target)
            .map_err(|e| match e {
                Errno::ISDIR | Errno::NOTEMPTY | Errno::EXIST => {
                    FsError::NotAFile { path: path.clone() }
                }
                e => map_errno(e, &path),
            });
        if renamed.is_err() {
            let _ = rustix::fs::unlinkat(&self.parent, &temp, AtFlags::empty());
        }
        renamed?;
        sync_dir(&self.parent, &path)
    }
}

/// Asks the kernel to start writing `len` bytes at `offset` of `file` to
/// disk now, without waiting: the commit's `fsync` then finds most of a big
/// file already written instead of all of it dirty, so the disk works while
/// the rest arrives. Advice only: a refusal changes nothing.
fn start_writeback(file: &File, offset: u64, len: usize) {
    #[cfg(any(target_os = "linux", target_os = "android"))]
    if let Some(len) = std::num::NonZeroU64::new(len as u64) {
        // On Linux, DONTNEED starts write-back of the range's dirty pages
        // (and drops the range from the cache once clean).
        let _ = rustix::fs::fadvise(file, offset, Some(len), rustix::fs::Advice::DontNeed);
    }
    #[cfg(not(any(target_os = "linux", target_os = "android")))]
    let _ = (file, offset, len);
}

/// The alignments direct writes to `file` need, as (offsets and lengths,
/// memory), when its file system says it supports direct I/O
/// (`STATX_DIOALIGN`, Linux 6.1+) and asks for nothing beyond
/// [`MAX_DIRECT_ALIGN`]. Offsets are aligned to whole pages at least, so a
/// direct chunk never shares a page with one written through the cache.
#[cfg(target_os = "linux")]
fn direct_io_alignment(file: &impl AsFd) -> Option<(usize, usize)> {
    use rustix::fs::{StatxFlags, statx};
    let facts = statx(file, "", AtFlags::EMPTY_PATH, StatxFlags::DIOALIGN).ok()?;
    let offset_align = facts.stx_dio_offset_align as usize;
    let memory_align = facts.stx_dio_mem_align as usize;
    let supported = facts.stx_mask & StatxFlags::DIOALIGN.bits() != 0
        && offset_align.is_power_of_two()
        && memory_align.is_power_of_two()
        && offset_align <= MAX_DIRECT_ALIGN
        && memory_align <= MAX_DIRECT_ALIGN;
    let page = rustix::param::page_size();
    supported.then_some((offset_align.max(page), memory_align))
}

#[cfg(not(target_os = "linux"))]
fn direct_io_alignment(_file: &impl AsFd) -> Option<(usize, usize)> {
    None
}

impl DirectFile {
    /// Opens the temporary file `temp` in `parent` (already open as `file`)
    /// again for direct I/O. `None` when [`direct_io_alignment`] says no, or
    /// the name no longer leads to `file`.
    #[cfg(target_os = "linux")]
    fn open(parent: &OwnedFd, temp: &OsStr, file: &File) -> Option<DirectFile> {
        let (offset_align, memory_align) = direct_io_alignment(file)?;
        // Non-blocking, so that a FIFO swapped in for the name cannot hang
        // the open; dropped once the file is known to be ours.
        let flags = OFlags::WRONLY | OFlags::DIRECT | OFlags::NONBLOCK | OFlags::NOCTTY;
        let direct = File::from(open_file_at(parent, temp, flags, Path::new("")).ok()?);
        // The name is ours, but the folder is not: check it is the same file.
        let (ours, opened) = (
            rustix::fs::fstat(file).ok()?,
            rustix::fs::fstat(&direct).ok()?,
        );
        if (ours.st_dev, ours.st_ino) != (opened.st_dev, opened.st_ino) {
            return None;
        }
        rustix::fs::fcntl_setfl(&direct, OFlags::DIRECT).ok()?;
        Some(DirectFile {
            file: direct,
            offset_align,
            memory_align,
            usable: std::sync::atomic::AtomicBool::new(true),
            written: AtomicU64::new(0),
        })
    }

    #[cfg(not(target_os = "linux"))]
    fn open(_parent: &OwnedFd, _temp: &OsStr, _file: &File) -> Option<DirectFile> {
        None
    }

    /// Writes `bytes` at `offset` directly when they are large and aligned
    /// enough; `false` when the caller must write them through the page
    /// cache instead. Any error turns direct I/O off for the rest of the
    /// write, and the caller writes the same bytes at the same offset again
    /// through the cache, which reports an error that persists.
    fn write_at(&self, offset: u64, bytes: &[u8]) -> bool {
        use std::os::unix::fs::FileExt;
        let aligned = offset.is_multiple_of(self.offset_align as u64)
            && bytes.len().is_multiple_of(self.offset_align)
            && bytes.len() >= MIN_DIRECT_WRITE;
        if !aligned || !self.usable.load(Ordering::Relaxed) {
            return false;
        }
        let written = if bytes.as_ptr().align_offset(self.memory_align) == 0 {
            self.file.write_all_at(bytes, offset)
        } else {
            // The received chunk sits anywhere in memory: copy it to an
            // aligned spot of a slightly larger buffer. The capacity is
            // reserved up front, so the bytes do not move.
            let mut buffer: Vec<u8> = Vec::with_capacity(bytes.len() + self.memory_align);
            let start = buffer.as_ptr().align_offset(self.memory_align);
            if start > self.memory_align {
                return false;
            }
            buffer.resize(start, 0);
            // The destination is aligned; the source may lie just before it.
            terminalwire_protocol::copy::extend_from_slice(&mut buffer, bytes);
            self.file.write_all_at(&buffer[start..], offset)
        };
        match written {
            Ok(()) => {
                self.written
                    .fetch_add(bytes.len() as u64, Ordering::Relaxed);
                true
            }
            Err(error) => {
                tracing::debug!(%error, "direct write refused: writing through the page cache");
                self.usable.store(false, Ordering::Relaxed);
                false
            }
        }
    }
}

impl StreamedWrite {
    /// Deletes the unfinished file now, while another thread may still hold
    /// the write (a chunk on its way when the session ended): the process
    /// may exit before the last holder drops it. What that thread still
    /// writes goes to a file no folder lists, freed when it lets go.
    pub fn discard(&self) {
        if let Some(temp) = &self.temp {
            let _ = rustix::fs::unlinkat(&self.parent, temp, AtFlags::empty());
        }
    }
}

impl Drop for StreamedWrite {
    fn drop(&mut self) {
        if let Some(temp) = self.temp.take() {
            let _ = rustix::fs::unlinkat(&self.parent, &temp, AtFlags::empty());
        }
    }
}

/// Appends `bytes` to the regular file at `path`, creating it with exactly
/// `create_mode` (applied with `fchmod`, so the umask does not matter) when it
/// does not exist. An existing file keeps its mode.
///
/// A symlink at `path` is [`FsError::SymlinkRace`]; a folder, FIFO, socket or
/// device is [`FsError::NotAFile`].
pub fn append(path: &Path, bytes: &[u8], create_mode: u32) -> Result<(), FsError> {
    let (parent, name) = open_parent(path)?;
    match stat_at(&parent, name, path)?.map(|st| kind_of(&st)) {
        None | Some(Kind::File) => {}
        Some(Kind::Symlink) => return Err(FsError::SymlinkRace { path: path.into() }),
        Some(Kind::Dir | Kind::Other) => return Err(FsError::NotAFile { path: path.into() }),
    }
    let base = OFlags::WRONLY | OFlags::APPEND | OFlags::NONBLOCK | OFlags::NOCTTY;
    // Create exclusively first, to know whether the mode is ours to set.
    let (fd, created) =
        match open_file_at(&parent, name, base | OFlags::CREATE | OFlags::EXCL, path) {
            Ok(fd) => (fd, true),
            Err(FsError::AlreadyExists { .. }) => (open_file_at(&parent, name, base, path)?, false),
            Err(error) => return Err(error),
        };
    let mut file = File::from(fd);
    ensure_regular(&file, path)?;
    if created {
        rustix::fs::fchmod(&file, to_mode(create_mode)).map_err(|e| map_errno(e, path))?;
    }
    file.write_all(bytes)
        .map_err(|source| io_error(path, source))
}

/// Deletes the file at `path`. Folders are refused ([`FsError::NotAFile`]);
/// a symlink is removed itself, its target untouched.
pub fn delete_file(path: &Path) -> Result<(), FsError> {
    let (parent, name) = open_parent(path)?;
    if let Some(Kind::Dir) = stat_at(&parent, name, path)?.map(|st| kind_of(&st)) {
        return Err(FsError::NotAFile { path: path.into() });
    }
    // Without `AT_REMOVEDIR`, a folder swapped in meanwhile fails with EISDIR.
    rustix::fs::unlinkat(&parent, name, AtFlags::empty()).map_err(|e| map_errno(e, path))
}

/// What is at `path`, or `None` when nothing is. A final symlink is reported
/// as [`Kind::Symlink`], not followed; a symlink on the way is
/// [`FsError::SymlinkRace`].
pub fn metadata(path: &Path) -> Result<Option<Metadata>, FsError> {
    let parts = components(path)?;
    let stat = match parts.split_last() {
        None => Some(rustix::fs::fstat(open_root(walk_flags())?).map_err(|e| map_errno(e, path))?),
        Some((name, dirs)) => {
            let parent = match open_dirs(dirs, walk_flags()) {
                Ok(parent) => parent,
                Err(FsError::NotFound { .. }) => return Ok(None),
                Err(error) => return Err(error),
            };
            stat_at(&parent, name, path)?
        }
    };
    Ok(stat.map(|st| to_metadata(&st)))
}

/// [`metadata`] from what path resolution already saw at the path, when it
/// looked the same way (reached without symlinks, the last component not
/// followed; an absent path's folder may be missing too, which [`metadata`]
/// also reports as nothing there): no second look. `None` for a sighting this
/// client does not know, which calls for a look of its own.
pub fn metadata_seen(sighting: Sighting) -> Option<Option<Metadata>> {
    match sighting {
        Sighting::Present(stat) => Some(Some(to_metadata(&stat))),
        Sighting::Absent => Some(None),
        _ => None,
    }
}

/// Sets the permission bits of the file or folder at `path` to exactly `mode`
/// (masked to `0o7777`).
///
/// The target is opened with `O_NOFOLLOW` and changed with `fchmod` (Linux
/// cannot `fchmodat` without following symlinks). A symlink at `path` is
/// [`FsError::SymlinkRace`]; FIFOs, sockets and devices are
/// [`FsError::NotAFile`], so that nothing with side effects on open is opened.
///
/// `expect` is the kind the caller approved `mode` for (a file's ceiling is
/// not a folder's): if the path is another kind when it is opened, nothing
/// changes and the answer is [`FsError::Denied`].
pub fn chmod(path: &Path, mode: u32, expect: Kind) -> Result<(), FsError> {
    let (parent, name) = open_parent(path)?;
    chmod_at(&parent, name, mode, path, Some(expect))
}

/// The entries of the folder at `path` (without `.` and `..`), sorted by
/// name. Symlinks are entries, not followed. Names that are not valid UTF-8
/// are left out and counted in [`Listing::skipped_non_utf8`].
///
/// More than `max_entries` entries (counting those left out) is
/// [`FsError::TooLarge`]. A symlink at `path` is [`FsError::SymlinkRace`].
pub fn list(path: &Path, max_entries: usize) -> Result<Listing, FsError> {
    let fd = open_dirs(&components(path)?, OFlags::RDONLY)?;
    let mut listing = Listing::default();
    for (name, kind) in read_entries(fd, path, max_entries, (path, max_entries))? {
        match name.into_string() {
            Ok(name) => listing.entries.push(Entry { name, kind }),
            Err(_) => listing.skipped_non_utf8 += 1,
        }
    }
    listing.entries.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(listing)
}

/// Creates the folder at `path` with exactly `mode` (applied with `fchmod`
/// after `mkdirat`, so the umask does not matter).
///
/// With `parents`, each missing folder on the way is created too, each with
/// `mode` (see [`create_dir_with`]), and an existing folder at `path` is fine; without, the parent must
/// exist and anything existing at `path` is [`FsError::AlreadyExists`]. No
/// symlink is ever followed: one on the way (or at `path`, with `parents`) is
/// [`FsError::SymlinkRace`].
pub fn create_dir(path: &Path, parents: bool, mode: u32) -> Result<(), FsError> {
    create_dir_with(path, parents, mode, &mut |_| Some(mode))
}

/// [`create_dir`], where each missing folder on the way to `path` (with
/// `parents`) gets the mode `parent_mode` gives for its absolute path, asked
/// right before it is made; `None` refuses it: [`FsError::Denied`] naming
/// it, with the folders made before it left in place.
pub fn create_dir_with(
    path: &Path,
    parents: bool,
    mode: u32,
    parent_mode: &mut dyn FnMut(&Path) -> Option<u32>,
) -> Result<(), FsError> {
    let parts = components(path)?;
    let Some((last, dirs)) = parts.split_last() else {
        return if parents {
            Ok(())
        } else {
            Err(FsError::AlreadyExists { path: path.into() })
        };
    };
    if !parents {
        let parent = open_dirs(dirs, walk_flags())?;
        return make_dir_at(&parent, last, mode, path);
    }
    let mut dir = open_root(walk_flags())?;
    let mut shown = PathBuf::from("/");
    for (index, part) in parts.iter().enumerate() {
        let is_last = index + 1 == parts.len();
        shown.push(part);
        dir = match open_dir_at(&dir, part, walk_flags(), &shown) {
            Ok(next) => next,
            Err(FsError::NotFound { .. }) => {
                let mode = if is_last {
                    mode
                } else {
                    parent_mode(&shown).ok_or_else(|| FsError::Denied {
                        path: shown.clone(),
                    })?
                };
                match make_dir_at(&dir, part, mode, &shown) {
                    // Created by someone else meanwhile: use it if it is a folder.
                    Ok(()) | Err(FsError::AlreadyExists { .. }) => {}
                    Err(error) => return Err(error),
                }
                open_dir_at(&dir, part, walk_flags(), &shown)?
            }
            // Something other than a folder is already there.
            Err(FsError::NotADirectory { .. }) if is_last => {
                return Err(FsError::AlreadyExists { path: path.into() });
            }
            Err(error) => return Err(error),
        };
    }
    Ok(())
}

/// Deletes the folder at `path`.
///
/// Without `recursive` the folder must be empty ([`FsError::DirectoryNotEmpty`]
/// otherwise). With it, the whole tree is first walked through file
/// descriptors, never following symlinks (a symlink is an entry to remove,
/// not a folder to enter), calling `check(absolute_path, kind)` for every
/// entry below `path` (not `path` itself, which the caller has checked). If
/// `check` refuses any entry, nothing is deleted and the error is
/// [`FsError::Denied`] naming it. Then exactly the entries that were checked
/// are deleted, depth first; an entry that appeared after the walk makes its
/// folder's removal fail with [`FsError::DirectoryNotEmpty`], and a folder
/// replaced by a symlink meanwhile is [`FsError::SymlinkRace`].
///
/// More than [`MAX_DELETE_ENTRIES`] entries, or folders nested deeper than
/// [`MAX_DELETE_DEPTH`] below `path`, is [`FsError::TooLarge`] (nothing is
/// deleted). A symlink at `path` is [`FsError::SymlinkRace`].
pub fn delete_dir(
    path: &Path,
    recursive: bool,
    check: &mut dyn FnMut(&Path, Kind) -> bool,
) -> Result<(), FsError> {
    delete_dir_limited(
        path,
        recursive,
        check,
        Limits {
            depth: MAX_DELETE_DEPTH,
            entries: MAX_DELETE_ENTRIES,
        },
    )
}

#[derive(Debug, Clone, Copy)]
struct Limits {
    depth: usize,
    entries: usize,
}

fn delete_dir_limited(
    path: &Path,
    recursive: bool,
    check: &mut dyn FnMut(&Path, Kind) -> bool,
    limits: Limits,
) -> Result<(), FsError> {
    let (parent, name) = open_parent(path)?;
    if recursive {
        let dir = open_dir_at(&parent, name, OFlags::RDONLY, path)?;
        let mut walk = Walk {
            root: path,
            check,
            limits,
            count: 0,
        };
        let tree = walk.scan(dir.as_fd(), path, 0)?;
        remove_tree(dir.as_fd(), &tree, path)?;
    }
    remove_dir_at(&parent, name, path)
}

/// One entry found by [`Walk::scan`], with what was under it if a folder.
#[derive(Debug)]
struct Node {
    name: OsString,
    kind: Kind,
    children: Vec<Node>,
}

struct Walk<'a> {
    root: &'a Path,
    check: &'a mut dyn FnMut(&Path, Kind) -> bool,
    limits: Limits,
    count: usize,
}

impl Walk<'_> {
    /// The tree under `dir` (which is `shown`, `depth` levels below the root),
    /// every entry approved by the check.
    fn scan(
        &mut self,
        dir: BorrowedFd<'_>,
        shown: &Path,
        depth: usize,
    ) -> Result<Vec<Node>, FsError> {
        let remaining = self.limits.entries.saturating_sub(self.count);
        let entries = read_entries(
            rustix::fs::openat(
                dir,
                ".",
                OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
                Mode::empty(),
            )
            .map_err(|e| map_errno(e, shown))?,
            shown,
            remaining,
            (self.root, self.limits.entries),
        )?;
        self.count += entries.len();
        let mut nodes = Vec::with_capacity(entries.len());
        for (name, kind) in entries {
            let entry_path = shown.join(&name);
            if !(self.check)(&entry_path, kind) {
                return Err(FsError::Denied { path: entry_path });
            }
            let children = if kind == Kind::Dir {
                if depth + 1 > self.limits.depth {
                    return Err(FsError::TooLarge {
                        path: self.root.into(),
                        limit: to_u64(self.limits.depth),
                    });
                }
                let child = open_dir_at(&dir, &name, OFlags::RDONLY, &entry_path)?;
                self.scan(child.as_fd(), &entry_path, depth + 1)?
            } else {
                Vec::new()
            };
            nodes.push(Node {
                name,
                kind,
                children,
            });
        }
        Ok(nodes)
    }
}

/// Deletes exactly `nodes` under `dir` (which is `shown`), depth first.
fn remove_tree(dir: BorrowedFd<'_>, nodes: &[Node], shown: &Path) -> Result<(), FsError> {
    for node in nodes {
        let entry_path = shown.join(&node.name);
        let result = if node.kind == Kind::Dir {
            let child = match open_dir_at(&dir, &node.name, walk_flags(), &entry_path) {
                Ok(child) => child,
                // Already gone.
                Err(FsError::NotFound { .. }) => continue,
                Err(error) => return Err(error),
            };
            remove_tree(child.as_fd(), &node.children, &entry_path)?;
            remove_dir_at(&dir, &node.name, &entry_path)
        } else {
            // Without `AT_REMOVEDIR`: a folder swapped in meanwhile fails.
            rustix::fs::unlinkat(dir, &node.name, AtFlags::empty())
                .map_err(|e| map_errno(e, &entry_path))
        };
        match result {
            Ok(()) | Err(FsError::NotFound { .. }) => {}
            Err(error) => return Err(error),
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// Walking.

/// The flags intermediate folders are opened with (besides `O_DIRECTORY |
/// O_NOFOLLOW | O_CLOEXEC`): `O_PATH` where it exists, which needs only
/// search permission on the folder.
fn walk_flags() -> OFlags {
    #[cfg(any(target_os = "linux", target_os = "android"))]
    {
        OFlags::PATH
    }
    #[cfg(not(any(target_os = "linux", target_os = "android")))]
    {
        OFlags::RDONLY
    }
}

/// The components of an absolute path without `.` or `..` (empty components,
/// from `//` or a trailing `/`, are skipped).
fn components(path: &Path) -> Result<Vec<&OsStr>, FsError> {
    let invalid = |reason| FsError::InvalidPath {
        path: path.into(),
        reason,
    };
    let bytes = path.as_os_str().as_bytes();
    if bytes.first() != Some(&b'/') {
        return Err(invalid("not absolute"));
    }
    if bytes.contains(&0) {
        return Err(invalid("contains a NUL byte"));
    }
    let mut parts = Vec::new();
    for part in bytes.split(|&b| b == b'/') {
        match part {
            b"" => {}
            b"." | b".." => return Err(invalid("contains a `.` or `..` component")),
            part => parts.push(OsStr::from_bytes(part)),
        }
    }
    Ok(parts)
}

fn open_root(flags: OFlags) -> Result<OwnedFd, FsError> {
    rustix::fs::open(
        "/",
        flags | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| map_errno(e, Path::new("/")))
}

/// Opens the folder made of `parts` from `/`: the last with `last_flags`, the
/// others with [`walk_flags`], never following a symlink.
fn open_dirs(parts: &[&OsStr], last_flags: OFlags) -> Result<OwnedFd, FsError> {
    let Some((last, dirs)) = parts.split_last() else {
        return open_root(last_flags);
    };
    if let Some(fd) = open_dirs_at_once(parts, last_flags) {
        return Ok(fd);
    }
    let mut dir = open_root(walk_flags())?;
    let mut shown = PathBuf::from("/");
    for part in dirs {
        shown.push(part);
        dir = open_dir_at(&dir, part, walk_flags(), &shown)?;
    }
    shown.push(last);
    open_dir_at(&dir, last, last_flags, &shown)
}

/// The walk of [`open_dirs`] in one system call where the kernel offers it:
/// `openat2` with `RESOLVE_NO_SYMLINKS` refuses a symlink on every
/// component, as the walk does one `openat` at a time (a per-request cost
/// that dominated small requests). `None` on any failure, so the walk runs
/// and reports the precise error (which component, symlink or missing).
#[cfg(any(target_os = "linux", target_os = "android"))]
fn open_dirs_at_once(parts: &[&OsStr], last_flags: OFlags) -> Option<OwnedFd> {
    use rustix::fs::ResolveFlags;
    let mut path = Vec::with_capacity(parts.iter().map(|part| part.len() + 1).sum());
    for part in parts {
        path.push(b'/');
        path.extend_from_slice(part.as_bytes());
    }
    rustix::fs::openat2(
        rustix::fs::CWD,
        OsStr::from_bytes(&path),
        last_flags | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
        ResolveFlags::NO_SYMLINKS | ResolveFlags::NO_MAGICLINKS,
    )
    .ok()
}

#[cfg(not(any(target_os = "linux", target_os = "android")))]
fn open_dirs_at_once(_parts: &[&OsStr], _last_flags: OFlags) -> Option<OwnedFd> {
    None
}

/// Opens the parent folder of `path` for operating on its last component,
/// which is returned with it.
fn open_parent(path: &Path) -> Result<(OwnedFd, &OsStr), FsError> {
    let parts = components(path)?;
    let Some((name, dirs)) = parts.split_last() else {
        return Err(FsError::InvalidPath {
            path: path.into(),
            reason: "the root folder cannot be used here",
        });
    };
    Ok((open_dirs(dirs, walk_flags())?, name))
}

/// Opens folder `name` in `dir` (`shown` in errors) with `O_DIRECTORY |
/// O_NOFOLLOW`; a symlink there is [`FsError::SymlinkRace`].
fn open_dir_at(
    dir: &impl AsFd,
    name: &OsStr,
    flags: OFlags,
    shown: &Path,
) -> Result<OwnedFd, FsError> {
    let flags = flags | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    rustix::fs::openat(dir, name, flags, Mode::empty()).map_err(|e| match e {
        // `O_NOFOLLOW` fails with ELOOP on a symlink, or ENOTDIR when
        // combined with `O_PATH | O_DIRECTORY`: tell them apart.
        Errno::NOTDIR | Errno::LOOP => match stat_at(dir, name, shown) {
            Ok(Some(st)) if kind_of(&st) == Kind::Symlink => {
                FsError::SymlinkRace { path: shown.into() }
            }
            _ => map_errno(e, shown),
        },
        e => map_errno(e, shown),
    })
}

/// Opens file `name` in `dir` with `flags | O_NOFOLLOW | O_CLOEXEC` (mode
/// `0o600` if created; callers set the real mode with `fchmod`).
fn open_file_at(
    dir: &impl AsFd,
    name: &OsStr,
    flags: OFlags,
    shown: &Path,
) -> Result<OwnedFd, FsError> {
    rustix::fs::openat(
        dir,
        name,
        flags | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::from_raw_mode(0o600),
    )
    .map_err(|e| match e {
        Errno::NXIO => FsError::NotAFile { path: shown.into() },
        e => map_errno(e, shown),
    })
}

/// `fstatat(dir, name, AT_SYMLINK_NOFOLLOW)`; `None` when nothing is there.
fn stat_at(dir: &impl AsFd, name: &OsStr, shown: &Path) -> Result<Option<Stat>, FsError> {
    match rustix::fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW) {
        Ok(st) => Ok(Some(st)),
        Err(Errno::NOENT) => Ok(None),
        Err(e) => Err(map_errno(e, shown)),
    }
}

/// The entries of the folder open as `fd` (`shown` in errors), at most
/// `limit` of them; more is [`FsError::TooLarge`] about `too_large.0`,
/// naming the limit `too_large.1`.
fn read_entries(
    fd: OwnedFd,
    shown: &Path,
    limit: usize,
    too_large: (&Path, usize),
) -> Result<Vec<(OsString, Kind)>, FsError> {
    let mut dir = Dir::new(fd).map_err(|e| map_errno(e, shown))?;
    let mut entries = Vec::new();
    while let Some(entry) = dir.read() {
        let entry = entry.map_err(|e| map_errno(e, shown))?;
        let name = entry.file_name().to_bytes();
        if name == b"." || name == b".." {
            continue;
        }
        let name = OsStr::from_bytes(name);
        let kind = match entry.file_type() {
            FileType::RegularFile => Kind::File,
            FileType::Directory => Kind::Dir,
            FileType::Symlink => Kind::Symlink,
            FileType::Unknown => {
                let dir_fd = dir.fd().map_err(|e| map_errno(e, shown))?;
                match stat_at(&dir_fd, name, &shown.join(name))? {
                    Some(st) => kind_of(&st),
                    // Removed since it was listed.
                    None => continue,
                }
            }
            _ => Kind::Other,
        };
        if entries.len() >= limit {
            return Err(FsError::TooLarge {
                path: too_large.0.into(),
                limit: to_u64(too_large.1),
            });
        }
        entries.push((name.to_os_string(), kind));
    }
    Ok(entries)
}

// ---------------------------------------------------------------------------
// Helpers for the final component.

/// Refuses anything but a regular file; returns its size.
fn ensure_regular(file: &File, shown: &Path) -> Result<u64, FsError> {
    let meta = file.metadata().map_err(|source| io_error(shown, source))?;
    if meta.file_type().is_file() {
        Ok(meta.len())
    } else {
        Err(FsError::NotAFile { path: shown.into() })
    }
}

/// Creates the temporary file for [`write_atomic`] next to `name`.
fn create_temp(
    parent: &OwnedFd,
    name: &OsStr,
    shown: &Path,
) -> Result<(OsString, OwnedFd), FsError> {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let state = RandomState::new();
    for attempt in 0..TEMP_ATTEMPTS {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default();
        let count = COUNTER.fetch_add(1, Ordering::Relaxed);
        let random = state.hash_one((std::process::id(), nanos, count, attempt));
        let suffix = format!(".tw-{:08x}.tmp", random & 0xffff_ffff);
        // Keep the whole name within NAME_MAX.
        let keep = name.len().min(NAME_MAX - 1 - suffix.len());
        let mut temp = Vec::with_capacity(NAME_MAX);
        temp.push(b'.');
        temp.extend_from_slice(&name.as_bytes()[..keep]);
        temp.extend_from_slice(suffix.as_bytes());
        let temp = OsString::from_vec(temp);
        match open_file_at(
            parent,
            &temp,
            OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL,
            shown,
        ) {
            Ok(fd) => return Ok((temp, fd)),
            Err(FsError::AlreadyExists { .. } | FsError::SymlinkRace { .. }) => {}
            Err(error) => return Err(error),
        }
    }
    Err(io_error(
        shown,
        io::Error::new(
            io::ErrorKind::AlreadyExists,
            "could not find an unused temporary file name",
        ),
    ))
}

/// A temporary file that is removed when dropped, unless `name` was taken.
struct TempFile<'a> {
    parent: BorrowedFd<'a>,
    name: Option<OsString>,
}

impl Drop for TempFile<'_> {
    fn drop(&mut self) {
        if let Some(name) = self.name.take() {
            let _ = rustix::fs::unlinkat(self.parent, &name, AtFlags::empty());
        }
    }
}

/// Syncs the folder open as `dir` (possibly `O_PATH`, so reopened for reading).
/// Best effort when the folder cannot be opened for reading; file systems that
/// cannot sync folders are not an error.
fn sync_dir(dir: &OwnedFd, shown: &Path) -> Result<(), FsError> {
    let Ok(readable) = rustix::fs::openat(
        dir,
        ".",
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    ) else {
        return Ok(());
    };
    match rustix::fs::fsync(&readable) {
        Ok(()) | Err(Errno::INVAL | Errno::NOTSUP) => Ok(()),
        Err(e) => Err(map_errno(e, shown)),
    }
}

/// `mkdirat` then `fchmod` of exactly `mode`.
fn make_dir_at(dir: &OwnedFd, name: &OsStr, mode: u32, shown: &Path) -> Result<(), FsError> {
    rustix::fs::mkdirat(dir, name, to_mode(mode)).map_err(|e| map_errno(e, shown))?;
    chmod_at(dir, name, mode, shown, None)
}

/// `unlinkat(AT_REMOVEDIR)`, telling a symlink from a non-folder.
fn remove_dir_at(dir: &impl AsFd, name: &OsStr, shown: &Path) -> Result<(), FsError> {
    rustix::fs::unlinkat(dir, name, AtFlags::REMOVEDIR).map_err(|e| match e {
        Errno::NOTEMPTY | Errno::EXIST => FsError::DirectoryNotEmpty { path: shown.into() },
        Errno::NOTDIR => match stat_at(dir, name, shown) {
            Ok(Some(st)) if kind_of(&st) == Kind::Symlink => {
                FsError::SymlinkRace { path: shown.into() }
            }
            _ => FsError::NotADirectory { path: shown.into() },
        },
        e => map_errno(e, shown),
    })
}

/// Sets exactly `mode` on the file or folder `name` in `dir`, never following
/// a symlink.
fn chmod_at(
    dir: &OwnedFd,
    name: &OsStr,
    mode: u32,
    shown: &Path,
    expect: Option<Kind>,
) -> Result<(), FsError> {
    let check_kind = |st: &Stat| match kind_of(st) {
        kind @ (Kind::File | Kind::Dir) if expect.is_some_and(|expect| expect != kind) => {
            Err(FsError::Denied { path: shown.into() })
        }
        Kind::File | Kind::Dir => Ok(()),
        Kind::Symlink => Err(FsError::SymlinkRace { path: shown.into() }),
        Kind::Other => Err(FsError::NotAFile { path: shown.into() }),
    };
    match stat_at(dir, name, shown)? {
        None => {
            return Err(FsError::NotFound { path: shown.into() });
        }
        Some(st) => check_kind(&st)?,
    }
    let flags = OFlags::RDONLY | OFlags::NONBLOCK | OFlags::NOCTTY;
    match open_file_at(dir, name, flags, shown) {
        Ok(fd) => {
            check_kind(&rustix::fs::fstat(&fd).map_err(|e| map_errno(e, shown))?)?;
            rustix::fs::fchmod(&fd, to_mode(mode)).map_err(|e| map_errno(e, shown))
        }
        // No read permission (say mode 0o000 or 0o200): the owner may still
        // chmod it. Linux: change it through an `O_PATH` descriptor's
        // `/proc/self/fd` entry, as the C library does for `fchmodat`.
        #[cfg(any(target_os = "linux", target_os = "android"))]
        Err(FsError::Io { source, .. }) if source.kind() == io::ErrorKind::PermissionDenied => {
            use std::os::fd::AsRawFd;
            let fd = open_file_at(dir, name, OFlags::PATH, shown)?;
            check_kind(&rustix::fs::fstat(&fd).map_err(|e| map_errno(e, shown))?)?;
            let magic = format!("/proc/self/fd/{}", fd.as_raw_fd());
            rustix::fs::chmod(magic.as_str(), to_mode(mode)).map_err(|e| match e {
                // No /proc: report the original failure.
                Errno::NOENT => io_error(shown, source),
                e => map_errno(e, shown),
            })
        }
        Err(error) => Err(error),
    }
}

// ---------------------------------------------------------------------------
// Conversions.

fn map_errno(e: Errno, path: &Path) -> FsError {
    let path = path.to_path_buf();
    match e {
        Errno::NOENT => FsError::NotFound { path },
        Errno::EXIST => FsError::AlreadyExists { path },
        Errno::NOTEMPTY => FsError::DirectoryNotEmpty { path },
        Errno::LOOP => FsError::SymlinkRace { path },
        Errno::ISDIR => FsError::NotAFile { path },
        Errno::NOTDIR => FsError::NotADirectory { path },
        e => FsError::Io {
            path,
            source: e.into(),
        },
    }
}

fn io_error(path: &Path, source: io::Error) -> FsError {
    match source.raw_os_error() {
        Some(raw) => map_errno(Errno::from_raw_os_error(raw), path),
        None => FsError::Io {
            path: path.into(),
            source,
        },
    }
}

fn to_mode(mode: u32) -> Mode {
    Mode::from_bits_truncate((mode & PERMISSION_BITS) as _)
}

fn to_u64(n: usize) -> u64 {
    u64::try_from(n).unwrap_or(u64::MAX)
}

fn kind_of(st: &Stat) -> Kind {
    match FileType::from_raw_mode(st.st_mode as _) {
        FileType::RegularFile => Kind::File,
        FileType::Directory => Kind::Dir,
        FileType::Symlink => Kind::Symlink,
        _ => Kind::Other,
    }
}

// `Stat`'s field types differ between platforms; on some these casts are no-ops.
#[allow(clippy::unnecessary_cast)]
fn mode_bits(st: &Stat) -> u32 {
    (st.st_mode as u32) & PERMISSION_BITS
}

#[allow(clippy::unnecessary_cast)]
fn to_metadata(st: &Stat) -> Metadata {
    let seconds = st.st_mtime as i64;
    let millis = (st.st_mtime_nsec as i64) / 1_000_000;
    Metadata {
        kind: kind_of(st),
        size: u64::try_from(st.st_size as i64).unwrap_or(0),
        mode: mode_bits(st),
        modified_unix_ms: seconds.saturating_mul(1000).saturating_add(millis),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;
    use std::os::unix::fs::{PermissionsExt, symlink};
    use std::sync::mpsc;
    use std::time::Duration;

    /// A temporary folder and its canonical path (the walk refuses symlinks,
    /// and `/tmp` may be one).
    fn tmp() -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = fs::canonicalize(dir.path()).unwrap();
        (dir, path)
    }

    fn mode_of(path: &Path) -> u32 {
        fs::symlink_metadata(path).unwrap().permissions().mode() & 0o7777
    }

    fn names_in(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        names
    }

    fn mkfifo(path: &Path) {
        rustix::fs::mknodat(
            rustix::fs::CWD,
            path,
            FileType::Fifo,
            Mode::from_raw_mode(0o644),
            0,
        )
        .unwrap();
    }

    /// Runs `f` on another thread; fails instead of hanging when it blocks.
    fn within_seconds<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let _ = tx.send(f());
        });
        rx.recv_timeout(Duration::from_secs(10))
            .expect("the operation blocked")
    }

    fn accept_all(_: &Path, _: Kind) -> bool {
        true
    }

    #[test]
    fn relative_and_dot_paths_are_invalid() {
        let (_t, d) = tmp();
        fs::write(d.join("f"), "x").unwrap();
        let bad = [
            PathBuf::from("relative/f"),
            PathBuf::from(""),
            d.join("../f"),
            d.join("./f"),
            d.join("sub/.."),
            PathBuf::from(format!("{}/./f", d.display())),
        ];
        for path in &bad {
            assert!(
                matches!(read(path, 0, 10), Err(FsError::InvalidPath { .. })),
                "{path:?}"
            );
            assert!(matches!(
                write_atomic(path, b"y", FileMode::KEEP_OR_DEFAULT),
                Err(FsError::InvalidPath { .. })
            ));
            assert!(matches!(
                append(path, b"y", 0o600),
                Err(FsError::InvalidPath { .. })
            ));
            assert!(matches!(
                delete_file(path),
                Err(FsError::InvalidPath { .. })
            ));
            assert!(matches!(metadata(path), Err(FsError::InvalidPath { .. })));
            assert!(matches!(
                chmod(path, 0o600, Kind::File),
                Err(FsError::InvalidPath { .. })
            ));
            assert!(matches!(list(path, 10), Err(FsError::InvalidPath { .. })));
            assert!(matches!(
                create_dir(path, true, 0o700),
                Err(FsError::InvalidPath { .. })
            ));
            assert!(matches!(
                delete_dir(path, true, &mut accept_all),
                Err(FsError::InvalidPath { .. })
            ));
        }
        assert_eq!(fs::read(d.join("f")).unwrap(), b"x");
        // The root has no parent to write into.
        assert!(matches!(
            write_atomic(Path::new("/"), b"y", FileMode::KEEP_OR_DEFAULT),
            Err(FsError::InvalidPath { .. })
        ));
        // Doubled and trailing slashes are fine.
        let doubled = PathBuf::from(format!("{}//f/", d.display()));
        assert_eq!(read(&doubled, 0, 10).unwrap().0, b"x");
    }

    #[test]
    fn read_into_fills_the_callers_buffer_without_moving_it() {
        let (_t, d) = tmp();
        let f = d.join("f");
        fs::write(&f, b"hello world").unwrap();
        let mut stale = Vec::with_capacity(64);
        stale.extend_from_slice(b"left over");
        let made_at = stale.as_ptr();
        let (bytes, eof) = read_into(&f, 6, 64, stale).unwrap();
        assert_eq!((bytes.as_slice(), eof), (&b"world"[..], true));
        // The same allocation: the caller's thread made it (and its arena
        // keeps it), not the thread that read.
        assert_eq!(bytes.as_ptr(), made_at);
        // Too small a buffer still gets every byte asked for.
        let (bytes, eof) = read_into(&f, 0, 100, Vec::with_capacity(2)).unwrap();
        assert_eq!((bytes.as_slice(), eof), (&b"hello world"[..], true));
    }

    #[test]
    fn read_returns_ranges_and_eof() {
        let (_t, d) = tmp();
        let f = d.join("f");
        fs::write(&f, b"hello world").unwrap();
        assert_eq!(read(&f, 0, 100).unwrap(), (b"hello world".to_vec(), true));
        assert_eq!(read(&f, 6, 3).unwrap(), (b"wor".to_vec(), false));
        // Exactly up to the end: eof.
        assert_eq!(read(&f, 6, 5).unwrap(), (b"world".to_vec(), true));
        assert_eq!(read(&f, 0, 0).unwrap(), (Vec::new(), false));
        assert_eq!(read(&f, 11, 0).unwrap(), (Vec::new(), true));
        assert_eq!(read(&f, 1000, 10).unwrap(), (Vec::new(), true));
        assert!(matches!(read(&d, 0, 10), Err(FsError::NotAFile { .. })));
        assert!(matches!(
            read(&d.join("missing"), 0, 10),
            Err(FsError::NotFound { .. })
        ));
        assert!(matches!(
            read(&d.join("missing/f"), 0, 10),
            Err(FsError::NotFound { .. })
        ));
        assert!(matches!(
            read(&f.join("g"), 0, 10),
            Err(FsError::NotADirectory { .. })
        ));
    }

    #[test]
    fn fifos_are_not_files_and_do_not_block() {
        let (_t, d) = tmp();
        let fifo = d.join("fifo");
        mkfifo(&fifo);
        let path = fifo.clone();
        let result = within_seconds(move || read(&path, 0, 10));
        assert!(
            matches!(result, Err(FsError::NotAFile { .. })),
            "{result:?}"
        );
        let path = fifo.clone();
        let result = within_seconds(move || append(&path, b"x", 0o600));
        assert!(
            matches!(result, Err(FsError::NotAFile { .. })),
            "{result:?}"
        );
        let path = fifo.clone();
        let result = within_seconds(move || write_atomic(&path, b"x", FileMode::KEEP_OR_DEFAULT));
        assert!(
            matches!(result, Err(FsError::NotAFile { .. })),
            "{result:?}"
        );
        let path = fifo.clone();
        let result = within_seconds(move || chmod(&path, 0o600, Kind::File));
        assert!(
            matches!(result, Err(FsError::NotAFile { .. })),
            "{result:?}"
        );
        assert_eq!(metadata(&fifo).unwrap().unwrap().kind, Kind::Other);
        // Still a FIFO; no temporary file left.
        assert_eq!(names_in(&d), ["fifo"]);
    }

    #[test]
    fn write_atomic_creates_and_replaces_without_leftovers() {
        let (_t, d) = tmp();
        let f = d.join("f.txt");
        write_atomic(&f, b"first", FileMode::KEEP_OR_DEFAULT).unwrap();
        assert_eq!(fs::read(&f).unwrap(), b"first");
        assert_eq!(mode_of(&f), DEFAULT_FILE_MODE);
        write_atomic(&f, b"second, longer", FileMode::KEEP_OR_DEFAULT).unwrap();
        assert_eq!(fs::read(&f).unwrap(), b"second, longer");
        write_atomic(&f, b"", FileMode::KEEP_OR_DEFAULT).unwrap();
        assert_eq!(fs::read(&f).unwrap(), b"");
        assert_eq!(names_in(&d), ["f.txt"]);
        // A very long name still gets a temporary name within NAME_MAX.
        let long = d.join("n".repeat(255));
        write_atomic(&long, b"long", FileMode::KEEP_OR_DEFAULT).unwrap();
        assert_eq!(fs::read(&long).unwrap(), b"long");
        assert_eq!(names_in(&d).len(), 2);
        assert!(matches!(
            write_atomic(&d.join("missing/f"), b"x", FileMode::KEEP_OR_DEFAULT),
            Err(FsError::NotFound { .. })
        ));
    }

    #[test]
    fn modes_are_applied_exactly_whatever_the_umask() {
        // 0o666 and 0o777 would be cut by any usual umask (0o022, 0o077).
        let (_t, d) = tmp();
        for mode in [0o600, 0o644, 0o666, 0o640, 0o777] {
            let f = d.join(format!("w{mode:o}"));
            write_atomic(&f, b"x", FileMode::Exactly(mode)).unwrap();
            assert_eq!(mode_of(&f), mode, "write {mode:o}");
            let a = d.join(format!("a{mode:o}"));
            append(&a, b"x", mode).unwrap();
            assert_eq!(mode_of(&a), mode, "append {mode:o}");
            let c = d.join(format!("c{mode:o}"));
            create_dir(&c, false, mode | 0o700).unwrap();
            assert_eq!(mode_of(&c), mode | 0o700, "mkdir {mode:o}");
        }
        // Replacing keeps the old mode unless told otherwise.
        let f = d.join("keep");
        fs::write(&f, "old").unwrap();
        fs::set_permissions(&f, fs::Permissions::from_mode(0o640)).unwrap();
        write_atomic(&f, b"new", FileMode::KEEP_OR_DEFAULT).unwrap();
        assert_eq!(mode_of(&f), 0o640);
        write_atomic(&f, b"newer", FileMode::Exactly(0o600)).unwrap();
        assert_eq!(mode_of(&f), 0o600);
        // Appending to an existing file keeps its mode.
        append(&f, b"!", 0o666).unwrap();
        assert_eq!(mode_of(&f), 0o600);
        assert_eq!(fs::read(&f).unwrap(), b"newer!");
    }

    #[test]
    fn write_atomic_refuses_folders() {
        let (_t, d) = tmp();
        let sub = d.join("sub");
        fs::create_dir(&sub).unwrap();
        fs::write(sub.join("inner"), "keep").unwrap();
        assert!(matches!(
            write_atomic(&sub, b"x", FileMode::KEEP_OR_DEFAULT),
            Err(FsError::NotAFile { .. })
        ));
        assert_eq!(fs::read(sub.join("inner")).unwrap(), b"keep");
        assert_eq!(names_in(&d), ["sub"]);
    }

    #[test]
    fn a_final_symlink_is_a_race_and_its_target_is_untouched() {
        let (_t, d) = tmp();
        let (_o, outside) = tmp();
        let target = outside.join("secret");
        fs::write(&target, "secret").unwrap();
        fs::set_permissions(&target, fs::Permissions::from_mode(0o600)).unwrap();
        let link = d.join("link");
        symlink(&target, &link).unwrap();
        let race = |r: Result<(), FsError>| matches!(r, Err(FsError::SymlinkRace { .. }));
        assert!(matches!(
            read(&link, 0, 10),
            Err(FsError::SymlinkRace { .. })
        ));
        assert!(race(write_atomic(
            &link,
            b"pwned",
            FileMode::KEEP_OR_DEFAULT
        )));
        assert!(race(append(&link, b"pwned", 0o600)));
        assert!(race(chmod(&link, 0o777, Kind::File)));
        assert!(matches!(list(&link, 10), Err(FsError::SymlinkRace { .. })));
        assert!(race(delete_dir(&link, false, &mut accept_all)));
        assert!(race(delete_dir(&link, true, &mut accept_all)));
        // The link itself is described, not followed.
        assert_eq!(metadata(&link).unwrap().unwrap().kind, Kind::Symlink);
        assert_eq!(fs::read(&target).unwrap(), b"secret");
        assert_eq!(mode_of(&target), 0o600);
        assert_eq!(names_in(&d), ["link"]);
        assert_eq!(names_in(&outside), ["secret"]);

        // A symlink to a folder, as the final component.
        let dir_link = d.join("dir_link");
        symlink(&outside, &dir_link).unwrap();
        assert!(race(create_dir(&dir_link, true, 0o700)));
        assert!(matches!(
            create_dir(&dir_link, false, 0o700),
            Err(FsError::AlreadyExists { .. })
        ));
        assert!(matches!(
            list(&dir_link, 10),
            Err(FsError::SymlinkRace { .. })
        ));
        assert!(race(delete_dir(&dir_link, true, &mut accept_all)));
        assert_eq!(names_in(&outside), ["secret"]);

        // Deleting the link removes the link only.
        delete_file(&link).unwrap();
        assert!(fs::symlink_metadata(&link).is_err());
        assert_eq!(fs::read(&target).unwrap(), b"secret");
    }

    #[test]
    fn an_intermediate_symlink_is_a_race_and_nothing_happens_outside() {
        let (_t, d) = tmp();
        let (_o, outside) = tmp();
        fs::write(outside.join("f"), "outside").unwrap();
        fs::create_dir(outside.join("sub")).unwrap();
        let link = d.join("link");
        symlink(&outside, &link).unwrap();
        let via = |name: &str| link.join(name);
        let race = |r: &Result<(), FsError>| matches!(r, Err(FsError::SymlinkRace { path }) if path == &link);

        assert!(matches!(
            read(&via("f"), 0, 10),
            Err(FsError::SymlinkRace { path }) if path == link
        ));
        assert!(race(&write_atomic(
            &via("f"),
            b"pwned",
            FileMode::KEEP_OR_DEFAULT
        )));
        assert!(race(&write_atomic(
            &via("new"),
            b"pwned",
            FileMode::KEEP_OR_DEFAULT
        )));
        assert!(race(&append(&via("f"), b"pwned", 0o600)));
        assert!(race(&append(&via("new"), b"pwned", 0o600)));
        assert!(race(&delete_file(&via("f"))));
        assert!(race(&chmod(&via("f"), 0o777, Kind::File)));
        assert!(matches!(
            metadata(&via("f")),
            Err(FsError::SymlinkRace { .. })
        ));
        assert!(matches!(
            list(&via("sub"), 10),
            Err(FsError::SymlinkRace { .. })
        ));
        assert!(race(&create_dir(&via("new"), false, 0o700)));
        assert!(race(&create_dir(&via("new/deeper"), true, 0o700)));
        assert!(race(&delete_dir(&via("sub"), false, &mut accept_all)));
        assert!(race(&delete_dir(&via("sub"), true, &mut accept_all)));

        assert_eq!(fs::read(outside.join("f")).unwrap(), b"outside");
        assert_ne!(mode_of(&outside.join("f")), 0o777);
        assert_eq!(names_in(&outside), ["f", "sub"]);
        assert_eq!(names_in(&d), ["link"]);
        // Deeper down the same.
        fs::create_dir_all(d.join("a/b")).unwrap();
        symlink(&outside, d.join("a/b/c")).unwrap();
        assert!(matches!(
            write_atomic(&d.join("a/b/c/f"), b"pwned", FileMode::KEEP_OR_DEFAULT),
            Err(FsError::SymlinkRace { .. })
        ));
        assert_eq!(fs::read(outside.join("f")).unwrap(), b"outside");
    }

    #[test]
    fn append_creates_and_appends() {
        let (_t, d) = tmp();
        let f = d.join("log");
        append(&f, b"one\n", 0o600).unwrap();
        append(&f, b"two\n", 0o644).unwrap();
        assert_eq!(fs::read(&f).unwrap(), b"one\ntwo\n");
        assert_eq!(mode_of(&f), 0o600);
        assert!(matches!(
            append(&d, b"x", 0o600),
            Err(FsError::NotAFile { .. })
        ));
        assert!(matches!(
            append(&d.join("missing/log"), b"x", 0o600),
            Err(FsError::NotFound { .. })
        ));
    }

    #[test]
    fn delete_file_removes_files_only() {
        let (_t, d) = tmp();
        let f = d.join("f");
        fs::write(&f, "x").unwrap();
        delete_file(&f).unwrap();
        assert!(!f.exists());
        assert!(matches!(delete_file(&f), Err(FsError::NotFound { .. })));
        let sub = d.join("sub");
        fs::create_dir(&sub).unwrap();
        assert!(matches!(delete_file(&sub), Err(FsError::NotAFile { .. })));
        assert!(sub.is_dir());
        // A symlink to a folder: the link goes, the folder stays.
        let link = d.join("link");
        symlink(&sub, &link).unwrap();
        delete_file(&link).unwrap();
        assert!(sub.is_dir());
        assert_eq!(names_in(&d), ["sub"]);
    }

    #[test]
    fn metadata_describes_without_following() {
        let (_t, d) = tmp();
        let f = d.join("f");
        fs::write(&f, "12345").unwrap();
        fs::set_permissions(&f, fs::Permissions::from_mode(0o640)).unwrap();
        let meta = metadata(&f).unwrap().unwrap();
        assert_eq!(meta.kind, Kind::File);
        assert_eq!(meta.size, 5);
        assert_eq!(meta.mode, 0o640);
        let now_ms = i64::try_from(
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap()
                .as_millis(),
        )
        .unwrap();
        assert!((meta.modified_unix_ms - now_ms).abs() < 60_000, "{meta:?}");
        let sub = d.join("sub");
        fs::create_dir(&sub).unwrap();
        fs::set_permissions(&sub, fs::Permissions::from_mode(0o1750)).unwrap();
        let meta = metadata(&sub).unwrap().unwrap();
        assert_eq!((meta.kind, meta.mode), (Kind::Dir, 0o1750));
        symlink(&f, d.join("link")).unwrap();
        assert_eq!(
            metadata(&d.join("link")).unwrap().unwrap().kind,
            Kind::Symlink
        );
        assert_eq!(metadata(&d.join("missing")).unwrap(), None);
        assert_eq!(metadata(&d.join("missing/deeper")).unwrap(), None);
        assert_eq!(metadata(Path::new("/")).unwrap().unwrap().kind, Kind::Dir);
    }

    #[test]
    fn chmod_sets_exact_modes() {
        let (_t, d) = tmp();
        let f = d.join("f");
        fs::write(&f, "x").unwrap();
        chmod(&f, 0o600, Kind::File).unwrap();
        assert_eq!(mode_of(&f), 0o600);
        chmod(&f, 0o4755, Kind::File).unwrap();
        assert_eq!(mode_of(&f), 0o4755);
        // Unreadable files can still be changed by their owner.
        chmod(&f, 0o000, Kind::File).unwrap();
        assert_eq!(mode_of(&f), 0o000);
        chmod(&f, 0o200, Kind::File).unwrap();
        chmod(&f, 0o644, Kind::File).unwrap();
        assert_eq!(mode_of(&f), 0o644);
        let sub = d.join("sub");
        fs::create_dir(&sub).unwrap();
        chmod(&sub, 0o711, Kind::Dir).unwrap();
        assert_eq!(mode_of(&sub), 0o711);
        chmod(&sub, 0o755, Kind::Dir).unwrap();
        // A mode approved for a file is not applied to a folder, nor the reverse.
        assert!(matches!(
            chmod(&sub, 0o777, Kind::File),
            Err(FsError::Denied { .. })
        ));
        assert!(matches!(
            chmod(&f, 0o755, Kind::Dir),
            Err(FsError::Denied { .. })
        ));
        assert!(matches!(
            chmod(&d.join("missing"), 0o600, Kind::File),
            Err(FsError::NotFound { .. })
        ));
    }

    #[test]
    fn list_sorts_reports_kinds_and_caps() {
        let (_t, d) = tmp();
        fs::write(d.join("b.txt"), "x").unwrap();
        fs::create_dir(d.join("a_dir")).unwrap();
        symlink("/etc", d.join("c_link")).unwrap();
        mkfifo(&d.join("d_fifo"));
        let listing = list(&d, 10).unwrap();
        assert_eq!(listing.skipped_non_utf8, 0);
        let got: Vec<(String, Kind)> = listing.into_iter().map(|e| (e.name, e.kind)).collect();
        assert_eq!(
            got,
            [
                ("a_dir".to_owned(), Kind::Dir),
                ("b.txt".to_owned(), Kind::File),
                ("c_link".to_owned(), Kind::Symlink),
                ("d_fifo".to_owned(), Kind::Other),
            ]
        );
        assert_eq!(list(&d, 4).unwrap().entries.len(), 4);
        assert!(matches!(
            list(&d, 3),
            Err(FsError::TooLarge { limit: 3, .. })
        ));
        assert!(list(&d.join("a_dir"), 0).unwrap().entries.is_empty());
        assert!(matches!(
            list(&d.join("b.txt"), 10),
            Err(FsError::NotADirectory { .. })
        ));
        assert!(matches!(
            list(&d.join("nope"), 10),
            Err(FsError::NotFound { .. })
        ));
        assert!(!list(Path::new("/"), 100_000).unwrap().entries.is_empty());
    }

    #[test]
    fn list_skips_and_counts_non_utf8_names() {
        let (_t, d) = tmp();
        fs::write(d.join("ok"), "x").unwrap();
        let bad = OsStr::from_bytes(b"bad\xff\xfe");
        fs::write(d.join(bad), "x").unwrap();
        let listing = list(&d, 10).unwrap();
        assert_eq!(listing.skipped_non_utf8, 1);
        assert_eq!(
            listing.entries,
            [Entry {
                name: "ok".to_owned(),
                kind: Kind::File
            }]
        );
        // Skipped entries still count toward the cap.
        assert!(matches!(list(&d, 1), Err(FsError::TooLarge { .. })));
    }

    #[test]
    fn create_dir_with_and_without_parents() {
        let (_t, d) = tmp();
        let one = d.join("one");
        create_dir(&one, false, 0o750).unwrap();
        assert!(one.is_dir());
        assert_eq!(mode_of(&one), 0o750);
        assert!(matches!(
            create_dir(&one, false, 0o750),
            Err(FsError::AlreadyExists { .. })
        ));
        create_dir(&one, true, 0o700).unwrap();
        assert_eq!(mode_of(&one), 0o750, "an existing folder is left as it is");
        assert!(matches!(
            create_dir(&d.join("x/y"), false, 0o700),
            Err(FsError::NotFound { .. })
        ));
        let deep = d.join("a/b/c");
        create_dir(&deep, true, 0o710).unwrap();
        for p in [d.join("a"), d.join("a/b"), deep.clone()] {
            assert!(p.is_dir());
            assert_eq!(mode_of(&p), 0o710, "{p:?}");
        }
        // A file in the way.
        fs::write(d.join("file"), "x").unwrap();
        assert!(matches!(
            create_dir(&d.join("file"), true, 0o700),
            Err(FsError::AlreadyExists { .. })
        ));
        assert!(matches!(
            create_dir(&d.join("file/sub"), true, 0o700),
            Err(FsError::NotADirectory { .. })
        ));
        create_dir(Path::new("/"), true, 0o755).unwrap();
    }

    #[test]
    fn delete_dir_plain() {
        let (_t, d) = tmp();
        let empty = d.join("empty");
        fs::create_dir(&empty).unwrap();
        delete_dir(&empty, false, &mut accept_all).unwrap();
        assert!(!empty.exists());
        let full = d.join("full");
        fs::create_dir(&full).unwrap();
        fs::write(full.join("f"), "x").unwrap();
        assert!(matches!(
            delete_dir(&full, false, &mut accept_all),
            Err(FsError::DirectoryNotEmpty { .. })
        ));
        assert!(matches!(
            delete_dir(&full.join("f"), false, &mut accept_all),
            Err(FsError::NotADirectory { .. })
        ));
        assert!(matches!(
            delete_dir(&full.join("f"), true, &mut accept_all),
            Err(FsError::NotADirectory { .. })
        ));
        assert!(matches!(
            delete_dir(&d.join("missing"), true, &mut accept_all),
            Err(FsError::NotFound { .. })
        ));
        assert_eq!(fs::read(full.join("f")).unwrap(), b"x");
    }

    /// A tree with files, folders, an empty folder, a FIFO and a symlink to
    /// a folder outside (holding a file that must survive).
    fn tree(d: &Path, outside: &Path) -> PathBuf {
        let root = d.join("root");
        fs::create_dir_all(root.join("a/b/c")).unwrap();
        fs::create_dir_all(root.join("empty")).unwrap();
        fs::write(root.join("top.txt"), "t").unwrap();
        fs::write(root.join("a/one"), "1").unwrap();
        fs::write(root.join("a/b/two"), "2").unwrap();
        fs::write(root.join("a/b/c/three"), "3").unwrap();
        mkfifo(&root.join("a/fifo"));
        fs::write(outside.join("precious"), "keep me").unwrap();
        symlink(outside, root.join("a/out")).unwrap();
        root
    }

    #[test]
    fn recursive_delete_checks_every_entry_then_deletes() {
        let (_t, d) = tmp();
        let (_o, outside) = tmp();
        let root = tree(&d, &outside);
        let mut seen = Vec::new();
        let mut check = |p: &Path, k: Kind| {
            seen.push((p.strip_prefix(&root).unwrap().to_path_buf(), k));
            true
        };
        delete_dir(&root, true, &mut check).unwrap();
        seen.sort_by(|a, b| a.0.cmp(&b.0));
        let expected: Vec<(PathBuf, Kind)> = [
            ("a", Kind::Dir),
            ("a/b", Kind::Dir),
            ("a/b/c", Kind::Dir),
            ("a/b/c/three", Kind::File),
            ("a/b/two", Kind::File),
            ("a/fifo", Kind::Other),
            ("a/one", Kind::File),
            ("a/out", Kind::Symlink),
            ("empty", Kind::Dir),
            ("top.txt", Kind::File),
        ]
        .into_iter()
        .map(|(p, k)| (PathBuf::from(p), k))
        .collect();
        assert_eq!(seen, expected);
        assert!(!root.exists());
        assert_eq!(names_in(&d), Vec::<String>::new());
        // The symlink was removed, not followed.
        assert_eq!(fs::read(outside.join("precious")).unwrap(), b"keep me");
    }

    #[test]
    fn recursive_delete_refused_once_deletes_nothing() {
        let (_t, d) = tmp();
        let (_o, outside) = tmp();
        let root = tree(&d, &outside);
        let refused = root.join("a/b/two");
        let mut check = |p: &Path, _: Kind| p != refused;
        assert!(matches!(
            delete_dir(&root, true, &mut check),
            Err(FsError::Denied { path }) if path == refused
        ));
        for p in [
            "top.txt",
            "a/one",
            "a/b/two",
            "a/b/c/three",
            "empty",
            "a/fifo",
        ] {
            assert!(fs::symlink_metadata(root.join(p)).is_ok(), "{p}");
        }
        assert!(fs::symlink_metadata(root.join("a/out")).is_ok());
        assert_eq!(fs::read(outside.join("precious")).unwrap(), b"keep me");
        // Refusing the symlink: likewise.
        let link = root.join("a/out");
        let mut check = |p: &Path, k: Kind| !(p == link && k == Kind::Symlink);
        assert!(matches!(
            delete_dir(&root, true, &mut check),
            Err(FsError::Denied { .. })
        ));
        assert!(root.join("top.txt").exists());
    }

    #[test]
    fn recursive_delete_limits() {
        let (_t, d) = tmp();
        let root = d.join("root");
        fs::create_dir_all(root.join("1/2/3")).unwrap();
        for i in 0..5 {
            fs::write(root.join(format!("f{i}")), "x").unwrap();
        }
        let limited = |depth, entries| {
            delete_dir_limited(&root, true, &mut accept_all, Limits { depth, entries })
        };
        assert!(matches!(
            limited(2, 100),
            Err(FsError::TooLarge { limit: 2, .. })
        ));
        assert!(matches!(
            limited(100, 7),
            Err(FsError::TooLarge { limit: 7, .. })
        ));
        assert!(root.join("1/2/3").is_dir());
        assert_eq!(names_in(&root).len(), 6);
        // Exactly at the limits: fine (3 folders deep, 8 entries).
        limited(3, 8).unwrap();
        assert!(!root.exists());
    }

    #[test]
    fn deep_trees_hit_the_default_depth_limit() {
        let (_t, d) = tmp();
        let root = d.join("root");
        let mut deep = root.clone();
        for _ in 0..=MAX_DELETE_DEPTH {
            deep.push("d");
        }
        fs::create_dir_all(&deep).unwrap();
        assert!(matches!(
            delete_dir(&root, true, &mut accept_all),
            Err(FsError::TooLarge { .. })
        ));
        assert!(deep.is_dir());
        // One level less is fine.
        fs::remove_dir(&deep).unwrap();
        delete_dir(&root, true, &mut accept_all).unwrap();
        assert!(!root.exists());
    }

    #[test]
    fn errors_name_their_path() {
        let (_t, d) = tmp();
        let missing = d.join("missing");
        let error = read(&missing.join("f"), 0, 1).unwrap_err();
        assert_eq!(error.path(), missing);
        assert!(error.to_string().contains("does not exist"));
    }

    /// Whether the file system of `dir` supports direct I/O, by the rule
    /// [`DirectFile::open`] follows.
    fn supports_direct_io(dir: &Path) -> bool {
        let probe = dir.join("probe");
        let file = File::create(&probe).unwrap();
        let supported = direct_io_alignment(&file).is_some();
        std::fs::remove_file(&probe).unwrap();
        supported
    }

    /// A temporary folder next to the test binary: on the disk of the build
    /// (where `/tmp` may be a tmpfs without direct I/O).
    fn on_disk_tempdir() -> tempfile::TempDir {
        let exe = std::env::current_exe().unwrap();
        tempfile::tempdir_in(exe.parent().unwrap()).unwrap()
    }

    /// `len` bytes that differ from one offset to the next.
    fn numbered(start: usize, len: usize) -> Vec<u8> {
        (start..start + len).map(|i| (i % 251) as u8).collect()
    }

    #[test]
    fn streamed_write_sends_big_aligned_chunks_past_the_page_cache() {
        const CHUNK: usize = 512 * 1024;
        let dir = on_disk_tempdir();
        let root = dir.path().canonicalize().unwrap();
        let target = root.join("big.bin");
        let write = StreamedWrite::begin(&target, FileMode::KEEP_OR_DEFAULT).unwrap();
        // Out of order, two chunks from an odd address (copied to an aligned
        // one), one from a page-aligned address (written as it is), then a
        // small tail.
        for index in [2, 0] {
            let mut with_prefix = vec![0xff];
            with_prefix.extend(numbered(index * CHUNK, CHUNK));
            write
                .write_at((index * CHUNK) as u64, &with_prefix[1..])
                .unwrap();
        }
        let mut roomy: Vec<u8> = Vec::with_capacity(CHUNK + 4096);
        let start = roomy.as_ptr().align_offset(4096);
        roomy.resize(start, 0);
        roomy.extend(numbered(CHUNK, CHUNK));
        write.write_at(CHUNK as u64, &roomy[start..]).unwrap();
        let tail = numbered(3 * CHUNK, 1000);
        write.write_at((3 * CHUNK) as u64, &tail).unwrap();
        let direct = write.direct_bytes();
        write.commit().unwrap();

        assert!(
            std::fs::read(&target).unwrap() == numbered(0, 3 * CHUNK + 1000),
            "the committed file differs from what was written"
        );
        if supports_direct_io(&root) {
            assert_eq!(
                direct,
                Some(3 * CHUNK as u64),
                "the aligned chunks, not the tail"
            );
        } else {
            assert_eq!(direct, None);
        }
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn a_fifo_in_place_of_the_temporary_file_is_not_reopened_and_does_not_block() {
        let dir = on_disk_tempdir();
        let root = dir.path().canonicalize().unwrap();
        if !supports_direct_io(&root) {
            eprintln!("skipped: {} has no direct I/O", root.display());
            return;
        }
        let ours = File::create(root.join("ours")).unwrap();
        mkfifo(&root.join("swapped"));
        let parent: OwnedFd = File::open(&root).unwrap().into();
        let reopened = within_seconds(move || {
            DirectFile::open(&parent, OsStr::new("swapped"), &ours).is_some()
        });
        assert!(!reopened, "a FIFO was taken for the temporary file");
        // The same name, a regular file that is not ours: refused too.
        std::fs::remove_file(root.join("swapped")).unwrap();
        std::fs::write(root.join("swapped"), b"").unwrap();
        let ours = File::open(root.join("ours")).unwrap();
        let parent: OwnedFd = File::open(&root).unwrap().into();
        assert!(DirectFile::open(&parent, OsStr::new("swapped"), &ours).is_none());
        assert!(DirectFile::open(&parent, OsStr::new("ours"), &ours).is_some());
    }

    #[test]
    fn a_refused_direct_write_falls_back_to_the_page_cache_for_good() {
        const CHUNK: usize = 128 * 1024;
        let dir = on_disk_tempdir();
        let root = dir.path().canonicalize().unwrap();
        if !supports_direct_io(&root) {
            eprintln!("skipped: {} has no direct I/O", root.display());
            return;
        }
        let target = root.join("big.bin");
        let mut write = StreamedWrite::begin(&target, FileMode::KEEP_OR_DEFAULT).unwrap();
        // Claim no alignment is needed: the kernel then refuses the odd offset.
        write.direct.as_mut().unwrap().offset_align = 1;
        write.write_at(1, &numbered(1, CHUNK)).unwrap();
        write.write_at(0, &numbered(0, 1)).unwrap();
        // Aligned, but direct I/O was given up after the refusal.
        write
            .write_at(CHUNK as u64 + 1, &numbered(CHUNK + 1, CHUNK))
            .unwrap();
        let direct = write.direct.as_ref().unwrap();
        assert!(!direct.usable.load(Ordering::Relaxed));
        assert_eq!(write.direct_bytes(), Some(0));
        write.commit().unwrap();
        assert!(std::fs::read(&target).unwrap() == numbered(0, 2 * CHUNK + 1));
    }

    #[test]
    fn a_discarded_write_leaves_nothing_while_still_held() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().canonicalize().unwrap();
        let target = root.join("f");
        let write =
            std::sync::Arc::new(StreamedWrite::begin(&target, FileMode::KEEP_OR_DEFAULT).unwrap());
        let held = write.clone();
        write.write_at(0, b"unfinished").unwrap();
        let listed = || std::fs::read_dir(&root).unwrap().count();
        assert_eq!(listed(), 1, "the temporary file");
        write.discard();
        assert_eq!(listed(), 0, "gone while another holder writes on");
        held.write_at(10, b"more").unwrap_err();
        drop((write, held));
        assert!(!target.exists());
    }

    #[test]
    fn streamed_write_commits_atomically_and_aborts_cleanly() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().canonicalize().unwrap();
        let target = root.join("big.bin");
        std::fs::write(&target, b"old").unwrap();

        let write = StreamedWrite::begin(&target, FileMode::Exactly(0o640)).unwrap();
        // Out of order, as concurrent chunks may land.
        write.write_at(3, b"def").unwrap();
        write.write_at(0, b"abc").unwrap();
        assert_eq!(
            std::fs::read(&target).unwrap(),
            b"old",
            "not visible before commit"
        );
        write.commit().unwrap();
        assert_eq!(std::fs::read(&target).unwrap(), b"abcdef");
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(&target).unwrap().permissions().mode() & 0o7777,
            0o640
        );

        let write = StreamedWrite::begin(&target, FileMode::KEEP_OR_DEFAULT).unwrap();
        write.write_at(0, b"never").unwrap();
        drop(write);
        assert_eq!(std::fs::read(&target).unwrap(), b"abcdef");
        let names: Vec<_> = std::fs::read_dir(&root)
            .unwrap()
            .map(|entry| entry.unwrap().file_name())
            .collect();
        assert_eq!(
            names,
            vec![std::ffi::OsString::from("big.bin")],
            "no temp file left"
        );

        let link = root.join("link");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        assert!(matches!(
            StreamedWrite::begin(&link, FileMode::KEEP_OR_DEFAULT),
            Err(FsError::SymlinkRace { .. })
        ));
    }
}
