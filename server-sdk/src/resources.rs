//! Client resources as the app sees them: stdin, files, directories,
//! environment variables and the browser.
//!
//! Every call is a request the client checks against the user's
//! entitlements for this app's authority; a refusal is
//! [`ResourceError::Denied`] with the command the user can run to allow it
//! ([`ResourceError::grant_command`]). Several calls may be in flight at once
//! (`futures::future::join_all` over many reads works); the client runs them
//! concurrently up to a bound, but serves reads of stdin in the order they
//! were asked: raw reads in flight at once return the input in order.
//!
//! Paths are strings as the user would type them: absolute, `~/...`, or
//! relative to the user's home. [`Context::storage_path`] names a path in the
//! app's own storage folder, which is always allowed.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Poll, ready};
use std::time::{Duration, SystemTime};

use futures_util::StreamExt;
use futures_util::stream::{FuturesOrdered, FuturesUnordered};

use serde_bytes::ByteBuf;
use terminalwire_protocol::frame::{self as wire, Operation, Reply};

use crate::context::{Context, ResourceError};
use crate::pending::InputKind;

/// The longest input line the client sends, without its ending (longer
/// ones it refuses and skips).
pub(crate) const MAX_LINE: usize = 64 * 1024;

/// A line of stdin without its ending, refused as the client refuses it.
fn line_of(bytes: Vec<u8>) -> Result<Option<String>, ResourceError> {
    if bytes.len() > MAX_LINE {
        return Err(line_too_long());
    }
    String::from_utf8(bytes)
        .map(Some)
        .map_err(|_| ResourceError::Invalid {
            message: "input line is not valid UTF-8".into(),
        })
}

/// A line read up to its `\n`, without the `\n` or the `\r\n` that ends it.
fn without_ending(mut bytes: Vec<u8>) -> Vec<u8> {
    bytes.pop();
    if bytes.last() == Some(&b'\r') {
        bytes.pop();
    }
    bytes
}

/// The client's refusal of a line over [`MAX_LINE`].
fn line_too_long() -> ResourceError {
    ResourceError::Invalid {
        message: format!("input line longer than {MAX_LINE} bytes (skipped)"),
    }
}

/// Bytes of stdin a line read took from those kept for byte reads, put
/// back for the next read if the line read is dropped before it is done.
struct KeptBack<'a> {
    ctx: &'a Context,
    /// The id of the read that brought the first of them: put back, they
    /// go where it was typed (see `pending`).
    typed: u64,
    bytes: Vec<u8>,
}

impl Drop for KeptBack<'_> {
    fn drop(&mut self) {
        if !self.bytes.is_empty() {
            self.ctx
                .shared
                .unread_stdin(vec![(self.typed, std::mem::take(&mut self.bytes))]);
        }
    }
}

/// Largest payload of one `write`/`append` request: a request must fit in
/// one protocol frame. Larger appends are split; larger writes are streamed
/// ([`Files::writer`]), still atomic.
pub const MAX_WRITE: usize = 768 * 1024;
/// Size of each `file_read` request when reading a whole file.
pub const READ_CHUNK: u32 = 512 * 1024;
/// Largest file [`Files::read`] collects into memory.
pub const MAX_READ_TOTAL: u64 = 256 * 1024 * 1024;

fn unexpected<T>() -> Result<T, ResourceError> {
    Err(ResourceError::UnexpectedReply)
}

/// The bytes of a `data` reply to a read of at most `asked` bytes, and
/// whether the input ended there. More than asked is refused: a hostile
/// client could otherwise hand the app (and a whole-file read, its memory)
/// bytes it never asked for.
fn data_reply(reply: Reply, asked: u32) -> Result<(Vec<u8>, bool), ResourceError> {
    match reply {
        Reply::Data { bytes, eof } if bytes.len() as u64 <= u64::from(asked) => {
            Ok((bytes.into_vec(), eof))
        }
        Reply::Data { bytes, .. } => Err(ResourceError::TooLarge {
            message: format!(
                "the client answered a read of at most {asked} bytes with {}",
                bytes.len()
            ),
        }),
        _ => unexpected(),
    }
}

/// The client's standard input.
#[derive(Debug, Clone)]
pub struct Stdin {
    ctx: Context,
}

impl Stdin {
    pub(crate) fn new(ctx: Context) -> Self {
        Stdin { ctx }
    }

    /// One line without its ending, after showing `prompt` on the client's
    /// stderr; `None` at end of input.
    ///
    /// Stdin is one stream: bytes a [`reader`](Stdin::reader) took ahead
    /// and did not hand on (dropped after its first `lines()`, say), or
    /// that a [`read_chunk`](Stdin::read_chunk) given up received, come
    /// first, and the line goes on with what the client has not sent yet,
    /// read as bytes up to the newline (what follows it is kept for the
    /// next read). The prompt is then written to stderr by the server,
    /// before the line. A line typed for an earlier read with the same
    /// prompt that was given up comes before bytes typed after it.
    pub async fn read_line(&self, prompt: Option<&str>) -> Result<Option<String>, ResourceError> {
        let line = InputKind::Line(prompt.map(str::to_owned));
        // Boxed: every command's future holds room for this one.
        let Some(kept) = Box::pin(self.ctx.shared.kept_line(&line)).await? else {
            return self.ask_line(prompt).await;
        };
        // Put back for the next read should this one be given up (dropped
        // while it waits), as the input of every read given up is kept.
        let mut kept_back = KeptBack {
            ctx: &self.ctx,
            typed: kept.typed,
            bytes: kept.bytes,
        };
        if let Some(prompt) = prompt {
            // As the client shows it: on stderr, before the line is read.
            let _ = self.ctx.stderr().write_all(prompt.as_bytes()).await;
        }
        if kept_back.bytes.last() == Some(&b'\n') {
            return line_of(without_ending(std::mem::take(&mut kept_back.bytes)));
        }
        if kept.ended {
            // The end of input ended them: the last line, or none.
            let bytes = std::mem::take(&mut kept_back.bytes);
            return if bytes.is_empty() {
                Ok(None)
            } else {
                line_of(bytes)
            };
        }
        // The rest of the line is still the client's: read as bytes, as
        // its start was (a line read of the client's would refuse a
        // character split between the two as not UTF-8), up to the
        // newline; what comes after it is put back for the next read.
        loop {
            let (typed, chunk) = self.read_chunk_typed(crate::streams::STDIN_READ).await?;
            if chunk.is_empty() {
                // The end of input ends the last line.
                return line_of(std::mem::take(&mut kept_back.bytes));
            }
            let newline = chunk.iter().position(|&byte| byte == b'\n');
            let end = newline.map_or(chunk.len(), |at| at + 1);
            kept_back.bytes.extend_from_slice(&chunk[..end]);
            if newline.is_some() {
                self.unread_from(typed, &chunk, end);
                return line_of(without_ending(std::mem::take(&mut kept_back.bytes)));
            }
            if kept_back.bytes.len() > MAX_LINE + 1 {
                // Too long: the rest of it goes too, as the client skips
                // the rest of a line it refuses.
                kept_back.bytes.clear();
                self.skip_line().await?;
                return Err(line_too_long());
            }
        }
    }

    /// Reads and drops stdin up to the next newline, or to the end.
    async fn skip_line(&self) -> Result<(), ResourceError> {
        loop {
            let (typed, chunk) = self.read_chunk_typed(crate::streams::STDIN_READ).await?;
            if chunk.is_empty() {
                return Ok(());
            }
            if let Some(at) = chunk.iter().position(|&byte| byte == b'\n') {
                self.unread_from(typed, &chunk, at + 1);
                return Ok(());
            }
        }
    }

    /// Puts `chunk[from..]`, what a line read took past its newline, back
    /// for the next read.
    fn unread_from(&self, typed: u64, chunk: &[u8], from: usize) {
        if from < chunk.len() {
            self.ctx
                .shared
                .unread_stdin(vec![(typed, chunk[from..].to_vec())]);
        }
    }

    /// A line read by the client, after it shows `prompt`.
    async fn ask_line(&self, prompt: Option<&str>) -> Result<Option<String>, ResourceError> {
        let op = Operation::StdinReadLine {
            prompt: prompt.map(str::to_owned),
        };
        match self.ctx.request(op).await? {
            Reply::Line { line } => Ok(line),
            _ => unexpected(),
        }
    }

    /// One line typed without echo on the client's terminal. Fails with
    /// [`ResourceError::Unsupported`] when the client's stdin is not a
    /// terminal (a password is never read from a pipe by accident), with a
    /// message for the user that says so: `cannot read a password: stdin is
    /// not a terminal but a pipe (...)`. An app that offers another way
    /// (say, `--password-stdin`) checks `ctx.terminal().stdin.is_tty()`
    /// first, or matches the variant, and says so.
    pub async fn read_password(&self, prompt: &str) -> Result<Option<String>, ResourceError> {
        let op = Operation::StdinReadPassword {
            prompt: Some(prompt.to_owned()),
        };
        let stdin = self.ctx.terminal().stdin.kind;
        let reply = self.ctx.request(op).await;
        match reply.map_err(|error| error.for_stdin("read a password", stdin))? {
            Reply::Line { line } => Ok(line),
            _ => unexpected(),
        }
    }

    /// Up to `max` bytes of raw input (for piped data); empty at end of
    /// input. A `max` of 0 is refused at once ([`ResourceError::Invalid`]):
    /// its empty answer could not be told from the end of input.
    pub async fn read_chunk(&self, max: u32) -> Result<Vec<u8>, ResourceError> {
        self.read_chunk_typed(max).await.map(|(_, bytes)| bytes)
    }

    /// [`read_chunk`](Stdin::read_chunk), with the id of the read that
    /// brought the bytes: where they go if they are put back.
    pub(crate) async fn read_chunk_typed(&self, max: u32) -> Result<(u64, Vec<u8>), ResourceError> {
        if max == 0 {
            return Err(ResourceError::Invalid {
                message: "a read of standard input must ask for at least one byte".into(),
            });
        }
        let (typed, reply) = self
            .ctx
            .shared
            .request_answered(Operation::StdinRead { max }, None)
            .await?;
        data_reply(reply, max).map(|(bytes, _)| (typed, bytes))
    }

    /// Stdin as a tokio `AsyncRead` and `AsyncBufRead`, reading ahead:
    /// `tokio::io::copy(&mut ctx.stdin().reader(), &mut ctx.stdout().writer())`
    /// or `reader.lines()` (see [`StdinReader`](crate::streams::StdinReader)).
    /// What it read ahead and did not hand on goes to later reads once it
    /// is dropped.
    pub fn reader(&self) -> crate::streams::StdinReader {
        crate::streams::StdinReader::new(self.ctx.clone())
    }
}

/// What a path is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum EntryKind {
    /// A regular file.
    File,
    /// A directory.
    Dir,
    /// A symbolic link (the client never follows it).
    Symlink,
    /// A device, FIFO, socket or something else.
    Other,
}

impl From<wire::EntryKind> for EntryKind {
    fn from(kind: wire::EntryKind) -> Self {
        match kind {
            wire::EntryKind::File => EntryKind::File,
            wire::EntryKind::Dir => EntryKind::Dir,
            wire::EntryKind::Symlink => EntryKind::Symlink,
            wire::EntryKind::Other => EntryKind::Other,
        }
    }
}

/// Facts about an existing path.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Metadata {
    /// What it is.
    pub kind: EntryKind,
    /// Size in bytes.
    pub size: u64,
    /// Permission bits.
    pub mode: u32,
    /// Last modification.
    pub modified: SystemTime,
}

/// One directory entry.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct DirEntry {
    /// Its name.
    pub name: String,
    /// What it is.
    pub kind: EntryKind,
}

/// Files on the client.
#[derive(Debug, Clone)]
pub struct Files {
    ctx: Context,
}

impl Files {
    pub(crate) fn new(ctx: Context) -> Self {
        Files { ctx }
    }

    async fn unit(&self, op: Operation) -> Result<(), ResourceError> {
        match self.ctx.request(op).await? {
            Reply::Unit => Ok(()),
            _ => unexpected(),
        }
    }

    /// The whole file (at most [`MAX_READ_TOTAL`] bytes), read in chunks.
    pub async fn read(&self, path: &str) -> Result<Vec<u8>, ResourceError> {
        self.read_limited(path, MAX_READ_TOTAL).await
    }

    /// The whole file, read in chunks, if it holds at most `limit` bytes
    /// (and [`MAX_READ_TOTAL`]); else [`ResourceError::TooLarge`], with no
    /// more than `limit` bytes and one chunk in memory.
    pub async fn read_limited(&self, path: &str, limit: u64) -> Result<Vec<u8>, ResourceError> {
        let limit = limit.min(MAX_READ_TOTAL);
        let mut content = Vec::new();
        loop {
            let have = content.len() as u64;
            // One byte beyond the limit, to tell a file of exactly `limit`
            // bytes from a longer one.
            let want = (limit - have + 1).min(u64::from(READ_CHUNK)) as u32;
            let (chunk, eof) = self.read_range(path, have, want).await?;
            if have + chunk.len() as u64 > limit {
                return Err(ResourceError::TooLarge {
                    message: format!("{path} is larger than {limit} bytes"),
                });
            }
            let empty = chunk.is_empty();
            content.extend_from_slice(&chunk);
            if eof || empty {
                return Ok(content);
            }
        }
    }

    /// Reads the file chunk by chunk with a few reads in flight, for files
    /// of any size in bounded memory ([`FileReader::next_chunk`]; the
    /// reader is also a tokio `AsyncRead` and `AsyncBufRead`).
    pub fn reader(&self, path: &str) -> FileReader {
        FileReader {
            ctx: self.ctx.clone(),
            path: path.to_owned(),
            next_offset: 0,
            eof_seen: false,
            current: None,
            in_flight: FuturesOrdered::new(),
        }
    }

    /// The whole file as UTF-8 text.
    pub async fn read_to_string(&self, path: &str) -> Result<String, ResourceError> {
        String::from_utf8(self.read(path).await?).map_err(|_| ResourceError::Invalid {
            message: format!("{path} is not valid UTF-8"),
        })
    }

    /// Up to `len` bytes from `offset`, and whether the file ended there. A
    /// client that answers with more than `len` bytes is refused
    /// ([`ResourceError::TooLarge`]).
    pub async fn read_range(
        &self,
        path: &str,
        offset: u64,
        len: u32,
    ) -> Result<(Vec<u8>, bool), ResourceError> {
        let op = Operation::FileRead {
            path: path.to_owned(),
            offset,
            len,
        };
        data_reply(self.ctx.request(op).await?, len)
    }

    /// Replaces (or creates) the file atomically; a new file gets mode 0644
    /// (0600 in storage), an existing one keeps its permission bits as far
    /// as the user's grant allows (never setuid, setgid or sticky).
    pub async fn write(&self, path: &str, bytes: impl AsRef<[u8]>) -> Result<(), ResourceError> {
        self.write_op(path, bytes.as_ref(), None).await
    }

    /// [`write`](Files::write) with explicit permission bits (within the
    /// grant's ceiling; never setuid, setgid or sticky).
    pub async fn write_with_mode(
        &self,
        path: &str,
        bytes: impl AsRef<[u8]>,
        mode: u32,
    ) -> Result<(), ResourceError> {
        self.write_op(path, bytes.as_ref(), Some(mode)).await
    }

    async fn write_op(
        &self,
        path: &str,
        bytes: &[u8],
        mode: Option<u32>,
    ) -> Result<(), ResourceError> {
        if bytes.len() > MAX_WRITE {
            let mut writer = self.open_writer(path, mode).await?;
            writer.write(bytes).await?;
            return writer.commit().await;
        }
        self.unit(Operation::FileWrite {
            path: path.to_owned(),
            bytes: ByteBuf::from(bytes.to_vec()),
            mode,
        })
        .await
    }

    /// Starts an atomic write of any size: write with
    /// [`FileWriter::write`], then [`FileWriter::commit`]. Nothing is visible
    /// at `path` before the commit; dropped without one, the write is
    /// abandoned and `path` is untouched. Memory stays bounded: a few chunks
    /// are in flight at a time. Given up once its request left, the write
    /// the client opened is abandoned when its answer comes.
    pub async fn writer(&self, path: &str) -> Result<FileWriter, ResourceError> {
        self.open_writer(path, None).await
    }

    /// [`writer`](Files::writer) with explicit permission bits.
    pub async fn writer_with_mode(
        &self,
        path: &str,
        mode: u32,
    ) -> Result<FileWriter, ResourceError> {
        self.open_writer(path, Some(mode)).await
    }

    async fn open_writer(
        &self,
        path: &str,
        mode: Option<u32>,
    ) -> Result<FileWriter, ResourceError> {
        let op = Operation::FileWriteOpen {
            path: path.to_owned(),
            mode,
        };
        // The open is waited for in a task of its own: given up once it
        // left, its answer still comes, and the write it opened is
        // abandoned at once instead of being kept until the session ends.
        let (opened, open) = tokio::sync::oneshot::channel();
        let ctx = self.ctx.clone();
        tokio::spawn(async move {
            let reply = ctx.request(op).await;
            if let Err(Ok(Reply::Handle { handle })) = opened.send(reply) {
                let _ = ctx.request(Operation::FileWriteAbort { handle }).await;
            }
        });
        // Given up after the answer came but before it was taken (a
        // `select!` that chose another branch on the same turn), the guard
        // abandons the write.
        let ctx = self.ctx.clone();
        let mut pending = PendingOpen {
            open,
            taken: false,
            abandon: Some(Box::new(move |handle| abandon_write(&ctx, handle))),
        };
        let answer = (&mut pending.open).await;
        pending.taken = true;
        match answer.map_err(|_| ResourceError::Disconnected)?? {
            Reply::Handle { handle } => Ok(FileWriter {
                ctx: self.ctx.clone(),
                handle: Some(handle),
                unfinished: Some(handle),
                finishing: AtomicBool::new(false),
                offset: 0,
                in_flight: FuturesUnordered::new(),
            }),
            _ => unexpected(),
        }
    }

    /// Appends to the file, creating it if needed (large data in several
    /// requests).
    pub async fn append(&self, path: &str, bytes: impl AsRef<[u8]>) -> Result<(), ResourceError> {
        let bytes = bytes.as_ref();
        let mut chunks = bytes.chunks(MAX_WRITE).peekable();
        if chunks.peek().is_none() {
            return self
                .unit(Operation::FileAppend {
                    path: path.to_owned(),
                    bytes: ByteBuf::new(),
                })
                .await;
        }
        for chunk in chunks {
            self.unit(Operation::FileAppend {
                path: path.to_owned(),
                bytes: ByteBuf::from(chunk.to_vec()),
            })
            .await?;
        }
        Ok(())
    }

    /// Deletes the file.
    pub async fn delete(&self, path: &str) -> Result<(), ResourceError> {
        self.unit(Operation::FileDelete {
            path: path.to_owned(),
        })
        .await
    }

    /// Whether a regular file exists there.
    pub async fn exists(&self, path: &str) -> Result<bool, ResourceError> {
        match self
            .ctx
            .request(Operation::FileExists {
                path: path.to_owned(),
            })
            .await?
        {
            Reply::Bool { value } => Ok(value),
            _ => unexpected(),
        }
    }

    /// Facts about the path; `None` when nothing is there.
    pub async fn metadata(&self, path: &str) -> Result<Option<Metadata>, ResourceError> {
        match self
            .ctx
            .request(Operation::Metadata {
                path: path.to_owned(),
            })
            .await?
        {
            Reply::Metadata(meta) if !meta.exists => Ok(None),
            Reply::Metadata(meta) => Ok(Some(Metadata {
                kind: meta.kind.map_or(EntryKind::Other, EntryKind::from),
                size: meta.size,
                mode: meta.mode,
                modified: if meta.modified_ms >= 0 {
                    SystemTime::UNIX_EPOCH + Duration::from_millis(meta.modified_ms as u64)
                } else {
                    SystemTime::UNIX_EPOCH - Duration::from_millis(meta.modified_ms.unsigned_abs())
                },
            })),
            _ => unexpected(),
        }
    }

    /// Changes the permission bits.
    pub async fn chmod(&self, path: &str, mode: u32) -> Result<(), ResourceError> {
        self.unit(Operation::Chmod {
            path: path.to_owned(),
            mode,
        })
        .await
    }
}

type ReadFuture = Pin<Box<dyn Future<Output = Result<ReadPiece, ResourceError>> + Send>>;

/// One answered read of a [`FileReader`].
struct ReadPiece {
    offset: u64,
    asked: u32,
    bytes: Vec<u8>,
    eof: bool,
}

/// Reads chunks of size [`READ_CHUNK`] in flight at once.
pub const READ_CHUNKS_IN_FLIGHT: usize = 4;

/// A client file read in chunks ([`Files::reader`]). A failed read ends it:
/// the error once, then the end (`Ok(None)`, or 0 bytes through
/// `AsyncRead`), never the chunks after a hole; read on with a new reader
/// from the offset reached, if the error allows.
pub struct FileReader {
    ctx: Context,
    path: String,
    next_offset: u64,
    eof_seen: bool,
    in_flight: FuturesOrdered<ReadFuture>,
    /// The chunk `AsyncRead` reads from and how far: boxed, since every
    /// command's future holds room for a reader, and most read by chunks.
    current: Option<Box<(Vec<u8>, usize)>>,
}

impl std::fmt::Debug for FileReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FileReader")
            .field("path", &self.path)
            .field("next_offset", &self.next_offset)
            .finish_non_exhaustive()
    }
}

impl FileReader {
    /// A read of `len` bytes at `offset`, as a future.
    fn read_at(&self, offset: u64, len: u32) -> ReadFuture {
        let ctx = self.ctx.clone();
        let op = Operation::FileRead {
            path: self.path.clone(),
            offset,
            len,
        };
        Box::pin(async move {
            let (bytes, eof) = data_reply(ctx.request(op).await?, len)?;
            Ok(ReadPiece {
                offset,
                asked: len,
                bytes,
                eof,
            })
        })
    }

    /// The next chunk, in order; `None` after the end of the file. (After
    /// reads through `AsyncRead`, first the rest of the chunk they read from.)
    pub async fn next_chunk(&mut self) -> Result<Option<Vec<u8>>, ResourceError> {
        if let Some((chunk, position)) = self.current.as_deref_mut()
            && *position < chunk.len()
        {
            let rest = chunk.split_off(*position);
            chunk.clear();
            *position = 0;
            return Ok(Some(rest));
        }
        std::future::poll_fn(|cx| self.poll_next_chunk(cx)).await
    }

    fn poll_next_chunk(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> Poll<Result<Option<Vec<u8>>, ResourceError>> {
        loop {
            while !self.eof_seen && self.in_flight.len() < READ_CHUNKS_IN_FLIGHT {
                let read = self.read_at(self.next_offset, READ_CHUNK);
                self.next_offset += u64::from(READ_CHUNK);
                self.in_flight.push_back(read);
            }
            let Some(result) = ready!(self.in_flight.poll_next_unpin(cx)) else {
                return Poll::Ready(Ok(None));
            };
            let ReadPiece {
                offset,
                asked,
                bytes: chunk,
                eof,
            } = match result {
                Ok(piece) => piece,
                Err(error) => {
                    // The reader ends here: the chunks asked for after the
                    // failed one would leave a hole where it was.
                    self.eof_seen = true;
                    self.in_flight = FuturesOrdered::new();
                    return Poll::Ready(Err(error));
                }
            };
            if eof || chunk.is_empty() {
                // Reads queued beyond the end come back empty; drop them.
                self.eof_seen = true;
                self.in_flight = FuturesOrdered::new();
            } else if let Ok(got) = u32::try_from(chunk.len())
                && got < asked
            {
                // A client may answer with less than asked and no end of
                // file (its own frame limit): the rest is read next, before
                // the chunks already asked for, or the file would have holes.
                let rest = self.read_at(offset + u64::from(got), asked - got);
                self.in_flight.push_front(rest);
            }
            if !chunk.is_empty() {
                return Poll::Ready(Ok(Some(chunk)));
            }
            if self.eof_seen {
                return Poll::Ready(Ok(None));
            }
        }
    }
}

impl tokio::io::AsyncBufRead for FileReader {
    fn poll_fill_buf(
        self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> Poll<std::io::Result<&[u8]>> {
        let this = self.get_mut();
        let (chunk, position) = &**this.current.get_or_insert_default();
        if *position == chunk.len() {
            let next = ready!(this.poll_next_chunk(cx))?.unwrap_or_default();
            *this.current.get_or_insert_default().as_mut() = (next, 0);
        }
        let current: &(Vec<u8>, usize) = this.current.get_or_insert_default();
        Poll::Ready(Ok(&current.0[current.1..]))
    }

    fn consume(self: Pin<&mut Self>, amount: usize) {
        if let Some((chunk, position)) = self.get_mut().current.as_deref_mut() {
            *position = (*position + amount).min(chunk.len());
        }
    }
}

impl tokio::io::AsyncRead for FileReader {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        crate::streams::poll_read_buffered(self, cx, buf)
    }
}

/// What a [`FileWriter`] answers once an earlier chunk failed: the write
/// was abandoned then, and that error returned.
fn abandoned() -> ResourceError {
    ResourceError::Invalid {
        message: "this write was abandoned after an earlier error".into(),
    }
}

/// Size of each chunk of a [`FileWriter`].
pub const WRITE_CHUNK: usize = 512 * 1024;
/// Chunks a [`FileWriter`] keeps in flight.
pub const WRITE_CHUNKS_IN_FLIGHT: usize = 4;

type ChunkFuture = Pin<Box<dyn Future<Output = Result<(), ResourceError>> + Send>>;

/// An atomic write to a client file in progress ([`Files::writer`]).
///
/// Dropped before [`commit`](FileWriter::commit) or
/// [`abort`](FileWriter::abort) returns (a time-out around them, say) it is
/// abandoned unless the commit or abort already left: the client is told
/// to drop the write and its temporary file at once, not when the session
/// ends.
pub struct FileWriter {
    ctx: Context,
    /// The write's handle while bytes may be written and committed.
    handle: Option<u64>,
    /// The client's write, until the commit or abort for it has left:
    /// dropped before then, the writer sends an abort.
    unfinished: Option<u64>,
    /// Set once that commit or abort has left.
    finishing: AtomicBool,
    offset: u64,
    in_flight: FuturesUnordered<ChunkFuture>,
}

impl std::fmt::Debug for FileWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FileWriter")
            .field("handle", &self.handle)
            .field("offset", &self.offset)
            .finish_non_exhaustive()
    }
}

impl FileWriter {
    /// Queues `bytes` after what was written before; waits only when
    /// [`WRITE_CHUNKS_IN_FLIGHT`] chunks are already on their way. When a
    /// chunk failed (the client refused it, say), the write is abandoned
    /// (the client drops its temporary file) before the error is returned.
    /// Not cancel-safe: given up (a time-out around it), the chunks queued
    /// so far stay queued, and the same bytes written again are written
    /// twice; abandon the writer (drop it) instead, or go on with the bytes
    /// after them.
    pub async fn write(&mut self, bytes: &[u8]) -> Result<(), ResourceError> {
        let handle = self.handle.ok_or_else(abandoned)?;
        for chunk in bytes.chunks(WRITE_CHUNK) {
            if let Err(error) = std::future::poll_fn(|cx| self.poll_room(cx)).await {
                let _ = self.abandon().await;
                return Err(error);
            }
            self.send_chunk(handle, chunk);
        }
        Ok(())
    }

    /// Ready when fewer than [`WRITE_CHUNKS_IN_FLIGHT`] chunks are on their
    /// way; the error of one that failed.
    fn poll_room(&mut self, cx: &mut std::task::Context<'_>) -> Poll<Result<(), ResourceError>> {
        while self.in_flight.len() >= WRITE_CHUNKS_IN_FLIGHT {
            if let Some(Err(error)) = ready!(self.in_flight.poll_next_unpin(cx)) {
                return Poll::Ready(Err(error));
            }
        }
        Poll::Ready(Ok(()))
    }

    /// Sends `chunk` after what was written before.
    fn send_chunk(&mut self, handle: u64, chunk: &[u8]) {
        let ctx = self.ctx.clone();
        let op = Operation::FileWriteChunk {
            handle,
            offset: self.offset,
            bytes: ByteBuf::from(chunk.to_vec()),
        };
        self.offset += chunk.len() as u64;
        self.in_flight.push(Box::pin(async move {
            match ctx.request(op).await? {
                Reply::Unit => Ok(()),
                _ => unexpected(),
            }
        }));
    }

    /// [`abandon`](FileWriter::abandon) from a poll: in a task of its own.
    fn abandon_later(&mut self) {
        self.handle = None;
        if self.finishing.load(Ordering::Acquire) {
            return;
        }
        let Some(handle) = self.unfinished else {
            return;
        };
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            self.unfinished = None;
            let mut in_flight = std::mem::take(&mut self.in_flight);
            let ctx = self.ctx.clone();
            runtime.spawn(async move {
                while in_flight.next().await.is_some() {}
                let _ = ctx.request(Operation::FileWriteAbort { handle }).await;
            });
        }
    }

    /// Ready once every chunk sent has been written; the error of one that
    /// failed (the write is abandoned then).
    fn poll_written(&mut self, cx: &mut std::task::Context<'_>) -> Poll<std::io::Result<()>> {
        while let Some(result) = ready!(self.in_flight.poll_next_unpin(cx)) {
            if let Err(error) = result {
                self.abandon_later();
                return Poll::Ready(Err(error.into()));
            }
        }
        Poll::Ready(Ok(()))
    }

    /// Bytes written so far.
    pub fn len(&self) -> u64 {
        self.offset
    }

    /// True when nothing was written yet.
    pub fn is_empty(&self) -> bool {
        self.offset == 0
    }

    /// Waits for every chunk, then makes the new content visible at the
    /// path. When a chunk failed, the write is abandoned before the error
    /// is returned, and the path is untouched.
    ///
    /// Given up before the commit leaves (waiting for the chunks, or for
    /// room to send it), the write is abandoned and the path untouched;
    /// once it left, the client commits.
    pub async fn commit(mut self) -> Result<(), ResourceError> {
        let handle = self.handle.take().ok_or_else(abandoned)?;
        while let Some(result) = self.in_flight.next().await {
            if let Err(error) = result {
                let _ = self.abandon().await;
                return Err(error);
            }
        }
        let commit = Operation::FileWriteCommit { handle };
        let reply = self
            .ctx
            .shared
            .request_noting(commit, Some(&self.finishing))
            .await;
        self.unfinished = None;
        match reply? {
            Reply::Unit => Ok(()),
            _ => unexpected(),
        }
    }

    /// Waits for the chunks on their way, then has the client drop the
    /// write; nothing more may be written. The abort's answer (errors of
    /// an abandoned write are its own, already returned).
    async fn abandon(&mut self) -> Result<Reply, ResourceError> {
        self.handle = None;
        let Some(handle) = self.unfinished else {
            return Ok(Reply::Unit);
        };
        while self.in_flight.next().await.is_some() {}
        let abort = Operation::FileWriteAbort { handle };
        let reply = self
            .ctx
            .shared
            .request_noting(abort, Some(&self.finishing))
            .await;
        self.unfinished = None;
        reply
    }

    /// Abandons the write; the path is untouched. Given up before it
    /// returns, the abort is sent all the same.
    pub async fn abort(mut self) -> Result<(), ResourceError> {
        match self.abandon().await? {
            Reply::Unit => Ok(()),
            _ => unexpected(),
        }
    }
}

/// `AsyncWrite` for `tokio::io::copy` and friends: a write queues up to
/// [`WRITE_CHUNK`] bytes as [`FileWriter::write`] does; `flush` and
/// `shutdown` wait until every chunk is written. Neither commits: call
/// [`FileWriter::commit`] after them, or the path is left untouched.
impl tokio::io::AsyncWrite for FileWriter {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        let Some(handle) = this.handle else {
            return Poll::Ready(Err(abandoned().into()));
        };
        if let Err(error) = ready!(this.poll_room(cx)) {
            this.abandon_later();
            return Poll::Ready(Err(error.into()));
        }
        if buf.is_empty() {
            return Poll::Ready(Ok(0));
        }
        let chunk = &buf[..buf.len().min(WRITE_CHUNK)];
        this.send_chunk(handle, chunk);
        Poll::Ready(Ok(chunk.len()))
    }

    fn poll_flush(
        self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> Poll<std::io::Result<()>> {
        self.get_mut().poll_written(cx)
    }

    fn poll_shutdown(
        self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> Poll<std::io::Result<()>> {
        self.get_mut().poll_written(cx)
    }
}

impl Drop for FileWriter {
    fn drop(&mut self) {
        // Neither committed nor aborted: tell the client to drop the
        // temporary file now rather than at the end of the session.
        if let Some(handle) = self.unfinished.take()
            && !self.finishing.load(Ordering::Acquire)
        {
            abandon_write(&self.ctx, handle);
        }
    }
}

/// Tells the client to drop the temporary file of the write `handle` (a
/// task of its own: called from a `Drop`).
fn abandon_write(ctx: &Context, handle: u64) {
    if let Ok(runtime) = tokio::runtime::Handle::try_current() {
        let ctx = ctx.clone();
        runtime.spawn(async move {
            let _ = ctx.request(Operation::FileWriteAbort { handle }).await;
        });
    }
}

/// The answer to a streamed write's open, not yet taken by its caller.
struct PendingOpen {
    open: tokio::sync::oneshot::Receiver<Result<Reply, ResourceError>>,
    /// The caller has the answer.
    taken: bool,
    /// Abandons the write of a handle ([`abandon_write`]).
    abandon: Option<Box<dyn FnOnce(u64) + Send>>,
}

impl Drop for PendingOpen {
    fn drop(&mut self) {
        if !self.taken {
            // No answer can come in after this: one still on its way is
            // refused, and its task abandons the write itself.
            self.open.close();
            if let Ok(Ok(Reply::Handle { handle })) = self.open.try_recv()
                && let Some(abandon) = self.abandon.take()
            {
                abandon(handle);
            }
        }
    }
}

/// Directories on the client.
#[derive(Debug, Clone)]
pub struct Dirs {
    ctx: Context,
}

impl Dirs {
    pub(crate) fn new(ctx: Context) -> Self {
        Dirs { ctx }
    }

    async fn unit(&self, op: Operation) -> Result<(), ResourceError> {
        match self.ctx.request(op).await? {
            Reply::Unit => Ok(()),
            _ => unexpected(),
        }
    }

    /// The entries, sorted by name.
    pub async fn list(&self, path: &str) -> Result<Vec<DirEntry>, ResourceError> {
        match self
            .ctx
            .request(Operation::DirList {
                path: path.to_owned(),
            })
            .await?
        {
            Reply::Entries { entries } => Ok(entries
                .into_iter()
                .map(|entry| DirEntry {
                    name: entry.name,
                    kind: entry.kind.into(),
                })
                .collect()),
            _ => unexpected(),
        }
    }

    /// Creates the directory (its parent must exist).
    pub async fn create(&self, path: &str) -> Result<(), ResourceError> {
        self.unit(Operation::DirCreate {
            path: path.to_owned(),
            parents: false,
            mode: None,
        })
        .await
    }

    /// Creates the directory and missing parents; fine if it exists.
    pub async fn create_all(&self, path: &str) -> Result<(), ResourceError> {
        self.unit(Operation::DirCreate {
            path: path.to_owned(),
            parents: true,
            mode: None,
        })
        .await
    }

    /// Whether a directory exists there.
    pub async fn exists(&self, path: &str) -> Result<bool, ResourceError> {
        match self
            .ctx
            .request(Operation::DirExists {
                path: path.to_owned(),
            })
            .await?
        {
            Reply::Bool { value } => Ok(value),
            _ => unexpected(),
        }
    }

    /// Deletes an empty directory.
    pub async fn delete(&self, path: &str) -> Result<(), ResourceError> {
        self.unit(Operation::DirDelete {
            path: path.to_owned(),
            recursive: false,
        })
        .await
    }

    /// Deletes the directory and everything in it; refused unless every
    /// entry may be written.
    pub async fn delete_all(&self, path: &str) -> Result<(), ResourceError> {
        self.unit(Operation::DirDelete {
            path: path.to_owned(),
            recursive: true,
        })
        .await
    }
}

/// The client's environment.
#[derive(Debug, Clone)]
pub struct Env {
    ctx: Context,
}

impl Env {
    pub(crate) fn new(ctx: Context) -> Self {
        Env { ctx }
    }

    /// The variable's value; `None` when unset. Denied unless granted.
    pub async fn get(&self, name: &str) -> Result<Option<String>, ResourceError> {
        match self
            .ctx
            .request(Operation::EnvGet {
                name: name.to_owned(),
            })
            .await?
        {
            Reply::Value { value } => Ok(value),
            _ => unexpected(),
        }
    }
}

/// The user's browser.
#[derive(Debug, Clone)]
pub struct Browser {
    ctx: Context,
}

impl Browser {
    pub(crate) fn new(ctx: Context) -> Self {
        Browser { ctx }
    }

    /// Opens the URL: the app's own http(s) origin always may; other
    /// origins and schemes need a grant.
    pub async fn open(&self, url: &str) -> Result<(), ResourceError> {
        match self
            .ctx
            .request(Operation::BrowserOpen {
                url: url.to_owned(),
            })
            .await?
        {
            Reply::Unit => Ok(()),
            _ => unexpected(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    /// Where an open's task sends its answer.
    type Answer = tokio::sync::oneshot::Sender<Result<Reply, ResourceError>>;

    /// An open whose caller gave up, recording the handles it abandons.
    fn pending_open() -> (Answer, PendingOpen, Arc<Mutex<Vec<u64>>>) {
        let (opened, open) = tokio::sync::oneshot::channel();
        let abandoned = Arc::new(Mutex::new(Vec::new()));
        let pending = PendingOpen {
            open,
            taken: false,
            abandon: Some(Box::new({
                let abandoned = abandoned.clone();
                move |handle| abandoned.lock().unwrap().push(handle)
            })),
        };
        (opened, pending, abandoned)
    }

    /// The race of an open given up in a `select!`: polled while no answer
    /// had come, the answer comes (its task sends it) while nobody polls,
    /// then the open is dropped. The write it opened is abandoned, every
    /// time: the answer is known to be there before the drop.
    #[test]
    fn an_open_answered_while_nobody_polled_is_abandoned_when_dropped() {
        let (opened, mut pending, abandoned) = pending_open();
        let waker = futures_util::task::noop_waker();
        let mut cx = std::task::Context::from_waker(&waker);
        let polled = std::pin::Pin::new(&mut pending.open).poll(&mut cx);
        assert!(polled.is_pending(), "answered before it was sent");
        assert!(opened.send(Ok(Reply::Handle { handle: 7 })).is_ok());
        drop(pending);
        assert_eq!(*abandoned.lock().unwrap(), [7]);
    }

    /// Dropped before its answer comes, the open refuses it (its task then
    /// abandons the write itself); dropped once its caller took the answer,
    /// it abandons nothing; an error abandons nothing.
    #[test]
    fn an_open_abandons_only_a_write_its_caller_did_not_take() {
        let (opened, pending, abandoned) = pending_open();
        drop(pending);
        assert!(opened.send(Ok(Reply::Handle { handle: 7 })).is_err());
        assert!(abandoned.lock().unwrap().is_empty());

        let (opened, mut pending, abandoned) = pending_open();
        assert!(opened.send(Ok(Reply::Handle { handle: 8 })).is_ok());
        assert!(pending.open.try_recv().is_ok());
        pending.taken = true;
        drop(pending);
        assert!(abandoned.lock().unwrap().is_empty());

        let (opened, pending, abandoned) = pending_open();
        assert!(opened.send(Err(ResourceError::Disconnected)).is_ok());
        drop(pending);
        assert!(abandoned.lock().unwrap().is_empty());
    }
}
