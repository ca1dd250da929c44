//! tokio's `AsyncRead`/`AsyncWrite` over the client's streams, for code that
//! speaks them: `tokio::io::copy`, `BufReader::lines`, codecs, compressors.
//!
//! - [`OutputWriter`] ([`Output::writer`]): `AsyncWrite` on the client's
//!   stdout or stderr, within its flow-control window.
//! - [`StdinReader`] ([`Stdin::reader`](crate::resources::Stdin::reader)):
//!   `AsyncRead` and `AsyncBufRead` on the client's stdin, with reads kept in
//!   flight ahead of the caller.
//! - [`FileReader`](crate::resources::FileReader) implements `AsyncRead` and
//!   `AsyncBufRead` itself, [`FileWriter`](crate::resources::FileWriter)
//!   `AsyncWrite` (commit it after `shutdown`).
//!
//! Errors are [`io::Error`]s whose inner error is the [`ResourceError`]
//! (`error.get_ref()` and `downcast` give it back).

use std::collections::VecDeque;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context as TaskContext, Poll, ready};

use tokio::io::{AsyncBufRead, AsyncRead, AsyncWrite, ReadBuf};

use crate::context::{Context, Output, ResourceError};

impl From<ResourceError> for io::Error {
    fn from(error: ResourceError) -> Self {
        let kind = match &error {
            ResourceError::Denied { .. } => io::ErrorKind::PermissionDenied,
            ResourceError::NotFound { .. } => io::ErrorKind::NotFound,
            ResourceError::Exists { .. } => io::ErrorKind::AlreadyExists,
            ResourceError::NotEmpty { .. } => io::ErrorKind::DirectoryNotEmpty,
            ResourceError::TooLarge { .. } => io::ErrorKind::FileTooLarge,
            ResourceError::Invalid { .. } | ResourceError::UnexpectedReply => {
                io::ErrorKind::InvalidData
            }
            ResourceError::Unsupported { .. } => io::ErrorKind::Unsupported,
            ResourceError::Disconnected => io::ErrorKind::BrokenPipe,
            ResourceError::Io { .. } | ResourceError::Other { .. } => io::ErrorKind::Other,
        };
        io::Error::new(kind, error)
    }
}

/// Most bytes one `poll_write` takes.
pub const MAX_WRITE: usize = 256 * 1024;

type Pending<T> = Pin<Box<dyn Future<Output = T> + Send>>;

/// The bytes of an [`OutputWriter`]'s write, shared with the write.
type Written = Arc<[u8]>;

/// `AsyncWrite` on the client's stdout or stderr ([`Output::writer`]).
///
/// A write of up to [`MAX_WRITE`] bytes is done once they are queued for
/// the client within its flow-control window, as with
/// [`Output::write_all`]: a slow terminal slows the writer down, and nothing
/// waits inside the writer, so there is nothing to flush and nothing is lost
/// when it is dropped. (A write given up while it waits may still reach the
/// client, as with any cancelled write.) `shutdown` does not close the
/// client's stream: it ends with the command.
pub struct OutputWriter {
    output: Output,
    /// The write in progress and the bytes it writes.
    writing: Option<(Pending<io::Result<()>>, Written)>,
}

impl std::fmt::Debug for OutputWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OutputWriter")
            .field("output", &self.output)
            .field(
                "writing",
                &self.writing.as_ref().map(|(_, bytes)| bytes.len()),
            )
            .finish()
    }
}

impl Output {
    /// This stream as a tokio `AsyncWrite`: `tokio::io::copy(&mut reader,
    /// &mut ctx.stdout().writer())`.
    pub fn writer(&self) -> OutputWriter {
        OutputWriter {
            output: self.clone(),
            writing: None,
        }
    }
}

impl OutputWriter {
    /// Finishes the write in progress, if any: the bytes it wrote.
    fn poll_writing(&mut self, cx: &mut TaskContext<'_>) -> Poll<io::Result<Option<Written>>> {
        let Some((writing, _)) = &mut self.writing else {
            return Poll::Ready(Ok(None));
        };
        let result = ready!(writing.as_mut().poll(cx));
        let written = self.writing.take().map(|(_, bytes)| bytes);
        Poll::Ready(result.map(|()| written))
    }
}

impl AsyncWrite for OutputWriter {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        loop {
            // A write that returned `Pending` is normally polled again with
            // the same bytes, and goes on where it was. Given up (a time-out)
            // and followed by other bytes, it is finished first (its bytes
            // may have reached the client in part), then they are written.
            if let Some(written) = ready!(this.poll_writing(cx))? {
                if buf.starts_with(&written) {
                    return Poll::Ready(Ok(written.len()));
                }
                continue;
            }
            if buf.is_empty() {
                return Poll::Ready(Ok(0));
            }
            let bytes: Arc<[u8]> = Arc::from(&buf[..buf.len().min(MAX_WRITE)]);
            let output = this.output.clone();
            let writing_bytes = bytes.clone();
            // A task of its own: the write holds the stream until it is
            // done, and a write given up and never polled again (the writer
            // kept) would hold every later write of the command.
            let task = tokio::spawn(async move { output.write_all(&writing_bytes).await });
            let writing: Pending<io::Result<()>> = Box::pin(async move {
                task.await
                    .unwrap_or_else(|error| Err(io::Error::other(error)))
            });
            this.writing = Some((writing, bytes));
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<io::Result<()>> {
        self.get_mut().poll_writing(cx).map_ok(drop)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<io::Result<()>> {
        self.get_mut().poll_writing(cx).map_ok(drop)
    }
}

/// Bytes each read of a [`StdinReader`] asks for.
pub const STDIN_READ: u32 = 64 * 1024;
/// Reads a [`StdinReader`] keeps in flight.
pub const STDIN_READS_IN_FLIGHT: usize = 2;

/// `AsyncRead` and `AsyncBufRead` on the client's stdin
/// ([`Stdin::reader`](crate::resources::Stdin::reader)), with
/// [`STDIN_READS_IN_FLIGHT`] reads of [`STDIN_READ`] bytes in flight, so
/// that piped input streams instead of waiting a round trip per chunk.
///
/// Dropped, it loses nothing: bytes it holds and bytes its reads still in
/// flight bring go to the command's next byte read of stdin
/// ([`read_chunk`](crate::resources::Stdin::read_chunk), another reader, or
/// a line read, which starts with them unless a line kept for it was typed
/// before them). A failed read
/// ends it the same way: the error once, then the end of input.
pub struct StdinReader {
    ctx: Context,
    /// Reads asked for, oldest first; each is polled, so each is sent.
    in_flight: VecDeque<Read>,
    /// Bytes received and not consumed: `buffer[position..]`.
    buffer: Vec<u8>,
    position: usize,
    /// The id of the read that brought `buffer`: where its rest goes if it
    /// is put back.
    buffer_typed: u64,
    ended: bool,
}

impl std::fmt::Debug for StdinReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StdinReader")
            .field("in_flight", &self.in_flight.len())
            .field("buffered", &(self.buffer.len() - self.position))
            .field("ended", &self.ended)
            .finish()
    }
}

/// The bytes of one read, with its id.
type Typed = (u64, Vec<u8>);

/// One read of a [`StdinReader`].
enum Read {
    /// Not answered yet.
    Waiting(Pending<Result<Typed, ResourceError>>),
    /// Answered before the reads ahead of it.
    Done(Result<Typed, ResourceError>),
}

impl StdinReader {
    pub(crate) fn new(ctx: Context) -> Self {
        StdinReader {
            ctx,
            in_flight: VecDeque::new(),
            buffer: Vec::new(),
            position: 0,
            buffer_typed: 0,
            ended: false,
        }
    }

    fn read_ahead(&mut self) {
        while !self.ended && self.in_flight.len() < STDIN_READS_IN_FLIGHT {
            let stdin = self.ctx.stdin();
            self.in_flight.push_back(Read::Waiting(Box::pin(async move {
                stdin.read_chunk_typed(STDIN_READ).await
            })));
        }
    }

    /// Polls every read in flight (so that each is sent); the oldest's
    /// answer once it has one.
    fn poll_oldest(
        &mut self,
        cx: &mut TaskContext<'_>,
    ) -> Poll<Option<Result<Typed, ResourceError>>> {
        for read in &mut self.in_flight {
            if let Read::Waiting(waiting) = read
                && let Poll::Ready(result) = waiting.as_mut().poll(cx)
            {
                *read = Read::Done(result);
            }
        }
        match self.in_flight.front() {
            None => Poll::Ready(None),
            Some(Read::Waiting(_)) => Poll::Pending,
            Some(Read::Done(_)) => match self.in_flight.pop_front() {
                Some(Read::Done(result)) => Poll::Ready(Some(result)),
                _ => Poll::Ready(None),
            },
        }
    }
}

impl AsyncBufRead for StdinReader {
    fn poll_fill_buf(self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<io::Result<&[u8]>> {
        let this = self.get_mut();
        while this.position == this.buffer.len() && !this.ended {
            this.read_ahead();
            let Some(result) = ready!(this.poll_oldest(cx)) else {
                break;
            };
            let (typed, bytes) = match result {
                Ok(typed_bytes) => typed_bytes,
                Err(error) => {
                    // The reader ends here, as at the end of input: what its
                    // reads still in flight bring goes to the next read.
                    this.ended = true;
                    this.give_back_reads();
                    return Poll::Ready(Err(error.into()));
                }
            };
            if bytes.is_empty() {
                // The end of input. Reads asked after it find it again, or
                // what was typed after it (a terminal's Ctrl-D): that goes to
                // the next read, as when the reader is dropped.
                this.ended = true;
                this.give_back_reads();
            }
            this.buffer = bytes;
            this.buffer_typed = typed;
            this.position = 0;
        }
        Poll::Ready(Ok(&this.buffer[this.position..]))
    }

    fn consume(self: Pin<&mut Self>, amount: usize) {
        let this = self.get_mut();
        this.position = (this.position + amount).min(this.buffer.len());
    }
}

impl AsyncRead for StdinReader {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        poll_read_buffered(self, cx, buf)
    }
}

/// `AsyncRead::poll_read` of a reader that buffers: what its buffer has,
/// as much as fits.
pub(crate) fn poll_read_buffered<R: AsyncBufRead>(
    mut reader: Pin<&mut R>,
    cx: &mut TaskContext<'_>,
    buf: &mut ReadBuf<'_>,
) -> Poll<io::Result<()>> {
    let available = ready!(reader.as_mut().poll_fill_buf(cx))?;
    let len = available.len().min(buf.remaining());
    buf.put_slice(&available[..len]);
    reader.consume(len);
    Poll::Ready(Ok(()))
}

impl StdinReader {
    /// Gives what it holds and its reads back for the command's next reads:
    /// first what it holds and what its reads brought, in order, then what
    /// its reads still in flight bring (they give up as they drop, and their
    /// input is kept behind this).
    fn give_back_reads(&mut self) {
        let mut held = vec![(self.buffer_typed, self.buffer.split_off(self.position))];
        self.position = 0;
        let mut waiting = Vec::new();
        for read in std::mem::take(&mut self.in_flight) {
            match read {
                Read::Done(Ok(bytes)) => held.push(bytes),
                Read::Done(Err(_)) => {}
                Read::Waiting(read) => waiting.push(read),
            }
        }
        held.retain(|(_, bytes)| !bytes.is_empty());
        if !held.is_empty() {
            self.ctx.shared.unread_stdin(held);
        }
        // Oldest first, so their input is kept in order.
        for read in waiting {
            drop(read);
        }
    }
}

impl Drop for StdinReader {
    fn drop(&mut self) {
        self.give_back_reads();
    }
}
