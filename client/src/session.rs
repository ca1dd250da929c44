//! The client's protocol engine for one session.
//!
//! Generic over the WebSocket's underlying byte stream and over the local
//! streams ([`LocalIo`]), so tests run it over `tokio::io::duplex` with
//! in-memory output.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll};
use std::time::Duration;

use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{FutureExt, SinkExt, Stream, StreamExt};
use serde_bytes::ByteBuf;
use terminalwire_protocol::flow::{Growth, MAX_GROWN_WINDOW, ReceiveWindow};
use terminalwire_protocol::frame::{
    Ack, ClientFrame, Data, Detach, ErrorCode, Hello, OpError, Operation, Reply, Request, Response,
    Resume, Resumed, ServerFrame, SessionError, Signal, SignalKind, StreamId, TerminalMode,
    WindowAdjust,
};
use terminalwire_protocol::linger::Linger;
use terminalwire_protocol::liveness::{Alarm, Idle, IdleWatch};
use terminalwire_protocol::resume::{self, Receipts, RecentRequests, ReplayBuffer, Seen};
use terminalwire_protocol::{MAX_FRAME_LEN, SUPPORTED_VERSIONS, codec};
use tokio::io::{
    AsyncBufRead, AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader,
};
use tokio::sync::{Mutex, Semaphore, mpsc};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::{self, Bytes, Message};

use crate::detached::SessionRecord;
use crate::error::ClientError;
use crate::last_resort::{self, ExitNow, Interrupts, SessionState, SignalWatch};
use crate::resources::Resources;
use crate::woken::WokenOnly;

/// Longest line `stdin_read_line` returns.
pub const MAX_LINE: usize = 64 * 1024;
/// Longest prompt of a `stdin_read_line` or `stdin_read_password`; a longer
/// one is refused. Prompts are written outside flow control, so each must
/// be small; a request waits until its prompt is written.
pub const MAX_PROMPT: usize = 4 * 1024;
/// A second Ctrl-C within this time of the first exits the client at once;
/// later ones are interrupts for the app again.
pub const DOUBLE_INTERRUPT: Duration = Duration::from_secs(3);
/// Longest the goodbye of a client the user ends may wait to be sent.
const GOODBYE_TIMEOUT: Duration = Duration::from_millis(200);
/// Longest a send may wait for the server to take data.
pub const SEND_TIMEOUT: Duration = Duration::from_secs(60);
/// Most bytes one `stdin_read` returns.
pub const MAX_STDIN_CHUNK: usize = 256 * 1024;

/// Time-outs and limits of a session.
#[derive(Debug, Clone)]
pub struct SessionConfig {
    /// Time the server has to answer the hello.
    pub handshake_timeout: Duration,
    /// The session fails when nothing arrives from the server for this long.
    pub idle_timeout: Duration,
    /// Interval of WebSocket pings that keep the connection alive.
    pub heartbeat: Duration,
    /// Requests the server may have in flight at once; more is a violation.
    pub max_requests_in_flight: usize,
    /// On a failure, how long already-received output may take to be written.
    pub flush_timeout: Duration,
    /// Files, directories, environment and browser, within the entitlements.
    pub resources: Resources,
    /// Stdin is the process's terminal: passwords may be read with echo off,
    /// raw mode and key reads are possible. When false, they are refused.
    pub stdin_is_terminal: bool,
    /// Catch SIGINT (forwarded as an interrupt; a second one exits at once),
    /// SIGWINCH (forwarded as a resize), SIGTERM and SIGHUP (clean exit).
    /// Only the real client sets this: it changes the whole process.
    pub handle_signals: bool,
    /// After sending answers, poll for the server's next request this long
    /// (at most an hour) before sleeping, once the server's next request
    /// came within three times this: two wake-ups saved per round trip on
    /// loopback (`terminalwire_protocol::linger`; default
    /// `linger::CLIENT_BUDGET`, 100 µs). The same after output written at
    /// once (a file, the null device), for the next chunk. Zero: never.
    pub linger: Duration,
}

impl Default for SessionConfig {
    fn default() -> Self {
        SessionConfig {
            handshake_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            heartbeat: Duration::from_secs(15),
            max_requests_in_flight: terminalwire_protocol::MAX_REQUESTS_IN_FLIGHT,
            flush_timeout: Duration::from_secs(5),
            resources: Resources::none(),
            stdin_is_terminal: false,
            handle_signals: false,
            linger: terminalwire_protocol::linger::CLIENT_BUDGET,
        }
    }
}

/// The local streams a session writes to and reads from.
pub struct LocalIo {
    /// Where the command's stdout goes.
    pub stdout: Output,
    /// Where the command's stderr (and prompts) go.
    pub stderr: Output,
    /// Where lines for the command come from.
    pub stdin: Box<dyn AsyncRead + Send + Unpin>,
}

impl std::fmt::Debug for LocalIo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalIo").finish_non_exhaustive()
    }
}

impl LocalIo {
    /// The process's own standard streams.
    pub fn process() -> Self {
        LocalIo {
            stdout: unbuffered_stdout(),
            stderr: Output::Async(Box::new(tokio::io::stderr())),
            // The terminal has one reader, which keeps the client's escapes
            // in raw mode (`keys`).
            stdin: if std::io::IsTerminal::is_terminal(&std::io::stdin()) {
                Box::new(crate::keys::TtyStdin)
            } else {
                Box::new(tokio::io::stdin())
            },
        }
    }
}

/// Where an output stream of the command goes.
pub enum Output {
    /// Any asynchronous writer (tests, in-process clients).
    Async(Box<dyn AsyncWrite + Send + Unpin>),
    /// A file descriptor written by a thread of its own with plain blocking
    /// writes: the chunks from the server are handed over without a copy,
    /// and several waiting ones go out in one vectored write.
    File(std::fs::File),
}

/// Standard output without std's line buffering (which scans every chunk
/// for a newline and splits big writes at it): a duplicate of fd 1, written
/// by a thread of its own. Falls back to `tokio::io::stdout()` if fd 1
/// cannot be duplicated.
fn unbuffered_stdout() -> Output {
    match rustix::io::dup(rustix::stdio::stdout()) {
        Ok(fd) => Output::File(std::fs::File::from(fd)),
        Err(_) => Output::Async(Box::new(tokio::io::stdout())),
    }
}

enum Chunk {
    /// Bytes from the server, counted against the stream's window.
    Remote(Bytes),
    /// Small chunks of the server's merged while they wait for the writer
    /// ([`OutputPipe::push`]); the writer takes them out ([`Chunk::settled`]).
    Merged(Merging),
    /// Bytes the client writes itself (its notices), not counted.
    Local(Vec<u8>),
    /// A request's prompt, not counted either. `_taken` goes with the chunk
    /// when the writer is done with it (written, or given up), which wakes
    /// the request waiting for it ([`PromptSink::show`]).
    Prompt {
        bytes: Vec<u8>,
        _taken: tokio::sync::oneshot::Sender<()>,
    },
}

/// Small chunks of the server's being merged: `None` once the writer took
/// them, after which nothing is added.
type Merging = Arc<std::sync::Mutex<Option<Vec<u8>>>>;

/// Largest chunk small chunks are merged into.
const MERGED_CHUNK: usize = 16 * 1024;

impl Chunk {
    /// The bytes (of a settled chunk: a merged one has none until then).
    fn bytes(&self) -> &[u8] {
        match self {
            Chunk::Remote(bytes) => bytes,
            Chunk::Merged(_) => &[],
            Chunk::Local(bytes) | Chunk::Prompt { bytes, .. } => bytes,
        }
    }

    /// The chunk as the writer writes it: merged chunks taken out (nothing
    /// is added to them after).
    fn settled(self) -> Chunk {
        match self {
            Chunk::Merged(merging) => Chunk::Remote(Bytes::from(
                merging
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .take()
                    .unwrap_or_default(),
            )),
            other => other,
        }
    }

    /// Whether the server chose these bytes (output or a prompt).
    fn is_the_servers(&self) -> bool {
        !matches!(self, Chunk::Local(_))
    }

    /// Bytes that count against the window.
    fn remote_len(&self) -> usize {
        match self {
            Chunk::Remote(bytes) => bytes.len(),
            Chunk::Merged(_) | Chunk::Local(_) | Chunk::Prompt { .. } => 0,
        }
    }
}

/// Where the requests that read stdin write their prompts: stderr's queue.
///
/// A prompt is not counted against the stderr window (the server did not
/// send it as output), so nothing else bounds it: a server whose requests
/// are answered at once (stdin at its end) while stderr's reader stalls
/// could queue a prompt per round trip. So the request waits until the
/// writer has taken its prompt: one prompt at most waits per request (and
/// stdin's lock, held meanwhile, lets one request at a time get there).
#[derive(Clone)]
struct PromptSink {
    queue: mpsc::UnboundedSender<Chunk>,
    /// The output's chunk being merged: closed before the prompt, so that
    /// later output does not go ahead of it.
    merging: Arc<std::sync::Mutex<Option<Merging>>>,
    /// The output's [`Direct::queued`], when it has one: a prompt counts
    /// there like any chunk queued, so the session does not write the
    /// server's later bytes past it.
    queued: Option<Arc<std::sync::atomic::AtomicUsize>>,
}

impl PromptSink {
    /// Queues `prompt` and waits until the writer is done with it.
    async fn show(&self, prompt: String) {
        use std::sync::atomic::Ordering;
        let (taken, done) = tokio::sync::oneshot::channel();
        if let Some(queued) = &self.queued {
            queued.fetch_add(1, Ordering::Release);
        }
        let chunk = Chunk::Prompt {
            bytes: prompt.into_bytes(),
            _taken: taken,
        };
        let sent = {
            let mut merging = self
                .merging
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            *merging = None;
            self.queue.send(chunk)
        };
        if sent.is_err() {
            // The writer is gone; the prompt with it.
            if let Some(queued) = &self.queued {
                queued.fetch_sub(1, Ordering::Release);
            }
            return;
        }
        // Err too once the chunk is dropped: that is the signal.
        let _ = done.await;
    }
}

enum Event {
    Consumed { index: usize, len: usize },
    Failed { index: usize, error: io::Error },
}

/// Window of an output the session writes itself ([`Direct`]), at first:
/// on a link with a round trip of 1 ms or more it grows as the data flows
/// ([`OutputPipe::size_window`]). Data the client has not read waits in
/// socket buffers, where it goes cold in the CPU caches; a window this
/// size keeps little of it there while still carrying GB/s on loopback
/// (1 GiB into `/dev/null` took 0.32-0.36 s with it, 0.35-0.9 s with 1 MiB
/// and about 0.65 s with 4 MiB or more). An output written by a thread (a
/// pipe, a terminal) goes through more hand-offs, and keeps the announced
/// window: 1 GiB into `| cat` took a median 0.78 s with 1 MiB and 1.09 s
/// with 512 KiB.
const DIRECT_OUTPUT_WINDOW: u32 = 512 * 1024;

/// Output chunks shorter than this are copied out of their message.
const SMALL_CHUNK: usize = 1024;

/// Most chunks a file writer takes for one vectored write.
const CHUNKS_PER_WRITE: usize = 64;

/// One local output stream: a writer task fed by a queue that the server's
/// window bounds.
struct OutputPipe {
    sid: StreamId,
    name: &'static str,
    queue: Option<mpsc::UnboundedSender<Chunk>>,
    task: JoinHandle<()>,
    /// Tells a file writer's thread, which cannot be aborted, to write no more.
    stop: Arc<std::sync::atomic::AtomicBool>,
    window: ReceiveWindow,
    /// Set when the output is a file that a write never waits on.
    direct: Option<Direct>,
    /// The last chunk queued, while small chunks of the server's are merged
    /// into it ([`OutputPipe::push`]).
    merging: Arc<std::sync::Mutex<Option<Merging>>>,
}

/// An output written by the session itself, without handing each chunk to
/// a thread and back (two wake-ups per chunk): a regular file or the null
/// device, where a write never waits for a reader. A pipe or a terminal
/// can stall for as long as its reader does, so it keeps its thread. Such
/// an output is never the terminal, so a consent prompt on screen does not
/// hold it up.
struct Direct {
    file: std::fs::File,
    /// Chunks handed to the thread and not written yet: the session writes
    /// itself only when there are none, so that the bytes stay in order.
    queued: Arc<std::sync::atomic::AtomicUsize>,
    /// A write took longer than [`SLOW_DIRECT_WRITE`] (a network or
    /// removable file system): the thread writes from then on, so that the
    /// session keeps answering while the file is slow.
    slow: std::sync::atomic::AtomicBool,
    /// [`SLOW_DIRECT_WRITE`] (tests shorten it).
    slow_after: Duration,
}

/// A direct write slower than this hands the output back to its thread.
const SLOW_DIRECT_WRITE: Duration = Duration::from_millis(50);

/// What became of a chunk of output.
#[must_use]
enum Pushed {
    /// Queued for the writer.
    Queued,
    /// Written; this many of its bytes count against the window.
    Written(usize),
    /// Writing it failed.
    Failed(io::Error),
}

/// Whether a write to `file` never waits for a reader: a regular file, or
/// the null device.
fn never_waits(file: &std::fs::File) -> bool {
    use rustix::fs::FileType;
    let Ok(stat) = rustix::fs::fstat(file) else {
        return false;
    };
    match FileType::from_raw_mode(stat.st_mode) {
        FileType::RegularFile => true,
        FileType::CharacterDevice => rustix::fs::stat("/dev/null").is_ok_and(|null| {
            FileType::from_raw_mode(null.st_mode) == FileType::CharacterDevice
                && null.st_rdev == stat.st_rdev
        }),
        _ => false,
    }
}

impl OutputPipe {
    fn spawn(
        index: usize,
        sid: StreamId,
        name: &'static str,
        output: Output,
        window: u32,
        events: mpsc::UnboundedSender<Event>,
        gate: Option<Arc<tokio::sync::RwLock<()>>>,
    ) -> Self {
        let (queue, chunks) = mpsc::unbounded_channel::<Chunk>();
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let queued = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let mut direct = None;
        let task = match output {
            Output::Async(writer) => tokio::spawn(write_async(index, writer, chunks, events, gate)),
            Output::File(file) => {
                if never_waits(&file)
                    && let Ok(copy) = file.try_clone()
                {
                    direct = Some(Direct {
                        file: copy,
                        queued: queued.clone(),
                        slow: std::sync::atomic::AtomicBool::new(false),
                        slow_after: SLOW_DIRECT_WRITE,
                    });
                }
                let stop = stop.clone();
                tokio::task::spawn_blocking(move || {
                    write_file(
                        index,
                        file,
                        chunks,
                        &events,
                        gate.as_deref(),
                        &stop,
                        &queued,
                    );
                })
            }
        };
        OutputPipe {
            sid,
            name,
            queue: Some(queue),
            task,
            window: ReceiveWindow::new(window),
            stop,
            direct,
            merging: Arc::default(),
        }
    }

    /// Sizes the window of this stream, whose sender was announced
    /// `announced` bytes, on a connection with round trip `rtt`. An output
    /// the session writes itself ([`Direct`]) shrinks to
    /// [`DIRECT_OUTPUT_WINDOW`] and grows on a long link: none of its bytes
    /// wait in memory, so a bigger window costs nothing. Other outputs keep
    /// the announced window: their queue holds it all when their reader
    /// stalls, in as many chunks as the server cut it into.
    fn size_window(&mut self, announced: u32, rtt: Duration) {
        if self.direct.is_some() {
            let growth = Growth {
                rtt,
                max: MAX_GROWN_WINDOW,
            };
            self.window = ReceiveWindow::with_growth(announced, growth);
            self.window.shrink_to(DIRECT_OUTPUT_WINDOW);
        }
    }

    /// Writes the server's `chunk` at once when the output is [`Direct`]
    /// and nothing is queued before it; queues it otherwise (and always
    /// queues the client's own text, whose failure the writer reports).
    fn push(&self, chunk: Chunk) -> Pushed {
        use std::sync::atomic::Ordering;
        let Some(queue) = &self.queue else {
            return Pushed::Queued;
        };
        // Held across the send: a prompt queued meanwhile must not go
        // between a merged chunk and what is added to it.
        let mut merging = self
            .merging
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(direct) = &self.direct
            && matches!(chunk, Chunk::Remote(_))
            && !direct.slow.load(Ordering::Relaxed)
            && direct.queued.load(Ordering::Acquire) == 0
        {
            // Nothing queued: whatever was merged is written.
            *merging = None;
            use std::io::Write as _;
            let started = std::time::Instant::now();
            let written = (&direct.file).write_all(chunk.bytes());
            if started.elapsed() > direct.slow_after {
                tracing::debug!(stream = self.name, "slow output: written by its thread");
                direct.slow.store(true, Ordering::Relaxed);
            }
            return match written {
                Ok(()) => Pushed::Written(chunk.remote_len()),
                Err(error) => Pushed::Failed(error),
            };
        }
        // A small chunk of the server's joins the one queued before it,
        // while the writer has not taken that one: a server sending its
        // output a byte at a time to an output that does not drain would
        // otherwise cost an entry (some 75 bytes) per byte of its window.
        let chunk = match chunk {
            Chunk::Remote(bytes) if bytes.len() < SMALL_CHUNK => {
                if let Some(open) = merging.as_ref() {
                    let mut open = open
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner);
                    if let Some(merged) = open.as_mut()
                        && merged.len() + bytes.len() <= MERGED_CHUNK
                    {
                        merged.extend_from_slice(&bytes);
                        return Pushed::Queued;
                    }
                }
                let mut first = Vec::with_capacity(SMALL_CHUNK);
                first.extend_from_slice(&bytes);
                let open: Merging = Arc::new(std::sync::Mutex::new(Some(first)));
                *merging = Some(open.clone());
                Chunk::Merged(open)
            }
            other => {
                *merging = None;
                other
            }
        };
        if let Some(direct) = &self.direct {
            direct.queued.fetch_add(1, Ordering::Release);
        }
        // A failed writer reports through its event; nothing to do here.
        let _ = queue.send(chunk);
        Pushed::Queued
    }

    /// Records `len` bytes of this stream written out; the grant to send,
    /// if one is due.
    fn consumed(&mut self, len: usize) -> Option<ClientFrame> {
        self.window
            .on_consumed_at(len, std::time::Instant::now())
            .map(|bytes| {
                ClientFrame::Window(WindowAdjust {
                    sid: self.sid,
                    bytes,
                })
            })
    }

    /// Where requests write their prompts; `None` once the output is closed.
    fn prompt_sink(&self) -> Option<PromptSink> {
        Some(PromptSink {
            queue: self.queue.clone()?,
            merging: self.merging.clone(),
            queued: self.direct.as_ref().map(|direct| direct.queued.clone()),
        })
    }

    /// Gives up on what the writer has not written yet.
    fn abort(&self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        self.task.abort();
    }
}

/// An asynchronous writer's loop.
async fn write_async(
    index: usize,
    mut writer: Box<dyn AsyncWrite + Send + Unpin>,
    mut chunks: mpsc::UnboundedReceiver<Chunk>,
    events: mpsc::UnboundedSender<Event>,
    gate: Option<Arc<tokio::sync::RwLock<()>>>,
) {
    // The writer may be a terminal (the process's stderr). Its chunks are
    // scanned for escapes, a small cost beside the writes of an error
    // stream.
    let mut keyboard = crate::terminal::KeyboardWatch::default();
    let result: io::Result<()> = async {
        while let Some(chunk) = chunks.recv().await {
            let chunk = chunk.settled();
            if chunk.is_the_servers() {
                keyboard.watch_output(chunk.bytes());
            }
            // Not while the client's own consent prompt is on screen.
            let _open = match &gate {
                Some(gate) => Some(gate.read().await),
                None => None,
            };
            writer.write_all(chunk.bytes()).await?;
            // Flush when caught up: interactive output shows at once,
            // bulk output is written in big pieces. With a prompt to make
            // way for, always: tokio's stderr hands the bytes to a thread
            // and returns before they are written, and a chunk still going
            // out after the gate opened could draw over the prompt.
            if chunks.is_empty() || gate.is_some() {
                writer.flush().await?;
            }
            let len = chunk.remote_len();
            if len > 0 {
                let _ = events.send(Event::Consumed { index, len });
            }
        }
        writer.flush().await
    }
    .await;
    if let Err(error) = result {
        let _ = events.send(Event::Failed { index, error });
    }
}

/// A file writer's loop, on a thread of its own: takes what is queued (up
/// to [`CHUNKS_PER_WRITE`]) and writes it with vectored writes, then
/// reports the server's bytes as consumed in one event. Unbuffered, so
/// nothing waits for a flush.
fn write_file(
    index: usize,
    mut file: std::fs::File,
    mut chunks: mpsc::UnboundedReceiver<Chunk>,
    events: &mpsc::UnboundedSender<Event>,
    gate: Option<&tokio::sync::RwLock<()>>,
    stop: &std::sync::atomic::AtomicBool,
    queued: &std::sync::atomic::AtomicUsize,
) {
    let mut batch: Vec<Chunk> = Vec::with_capacity(CHUNKS_PER_WRITE);
    // Only a terminal keeps the modes the app's bytes switch on.
    let mut keyboard =
        std::io::IsTerminal::is_terminal(&file).then(crate::terminal::KeyboardWatch::default);
    while let Some(first) = chunks.blocking_recv() {
        batch.push(first.settled());
        while batch.len() < CHUNKS_PER_WRITE
            && let Ok(chunk) = chunks.try_recv()
        {
            batch.push(chunk.settled());
        }
        // Not while the client's own consent prompt is on screen.
        let _open = gate.map(tokio::sync::RwLock::blocking_read);
        // Checked after the wait for the prompt, which can be long.
        if stop.load(std::sync::atomic::Ordering::Relaxed) {
            return;
        }
        if let Some(keyboard) = &mut keyboard {
            for chunk in batch.iter().filter(|chunk| chunk.is_the_servers()) {
                keyboard.watch_output(chunk.bytes());
            }
        }
        if let Err(error) = write_all_vectored(&mut file, &batch) {
            let _ = events.send(Event::Failed { index, error });
            return;
        }
        // Written: once none is left, the session may write directly again.
        queued.fetch_sub(batch.len(), std::sync::atomic::Ordering::Release);
        let len = batch.iter().map(Chunk::remote_len).sum();
        if len > 0 {
            let _ = events.send(Event::Consumed { index, len });
        }
        batch.clear();
    }
}

/// Writes every chunk in order, with as few `writev` calls as the file
/// takes.
fn write_all_vectored(file: &mut std::fs::File, chunks: &[Chunk]) -> io::Result<()> {
    use std::io::{IoSlice, Write};
    let mut slices: Vec<IoSlice<'_>> = chunks
        .iter()
        .map(|chunk| IoSlice::new(chunk.bytes()))
        .filter(|slice| !slice.is_empty())
        .collect();
    let mut slices = &mut slices[..];
    while !slices.is_empty() {
        match file.write_vectored(slices) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(written) => IoSlice::advance_slices(&mut slices, written),
            Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
            Err(error) => return Err(error),
        }
    }
    Ok(())
}

/// A socket of WebSocket messages: a `WebSocketStream`, or the
/// [`SecureSocket`](crate::secure::SecureSocket) that seals them.
///
/// Its stream half is polled only after it woke the waker of its last poll
/// ([`WokenOnly`]): it must keep the stream's waker apart from the sink's,
/// as `WebSocketStream` does.
pub trait Socket:
    futures_util::Stream<Item = Result<Message, tungstenite::Error>>
    + futures_util::Sink<Message, Error = tungstenite::Error>
    + Unpin
    + Send
    + 'static
{
}

impl<T> Socket for T where
    T: futures_util::Stream<Item = Result<Message, tungstenite::Error>>
        + futures_util::Sink<Message, Error = tungstenite::Error>
        + Unpin
        + Send
        + 'static
{
}

type Sink<S> = SplitSink<S, Message>;
/// Polled only when it woke its task (`woken`).
type Source<S> = WokenOnly<SplitStream<S>>;

/// The socket's two halves.
fn split<S: Socket>(socket: S) -> (Sink<S>, Source<S>) {
    let (sink, source) = socket.split();
    (sink, WokenOnly::new(source))
}

/// Runs a session on an open WebSocket and returns the command's exit status.
/// The session cannot be resumed or detached (see [`run_with`]).
pub async fn run<S>(
    socket: S,
    hello: Hello,
    io: LocalIo,
    config: &SessionConfig,
) -> Result<u8, ClientError>
where
    S: Socket,
{
    match run_with(socket, Start::Hello(Box::new(hello)), io, config, None).await? {
        Ended::Exit(status) => Ok(status),
        Ended::Detached(_) => Err(ClientError::Protocol(
            "the server detached a session that cannot be resumed".into(),
        )),
    }
}

/// How a session starts.
#[derive(Debug)]
pub enum Start {
    /// A new session: introduce the client with this hello.
    Hello(Box<Hello>),
    /// Re-attach to a session the user detached from.
    Attach(Box<SessionRecord>),
}

/// How a session ended, short of an error.
#[derive(Debug)]
pub enum Ended {
    /// The command exited with this status.
    Exit(u8),
    /// The user detached; the command goes on on the server, and this record
    /// re-attaches to it.
    Detached(Box<SessionRecord>),
}

/// Opens a new connection to the same server, secured and with the pinned
/// identity checked, to resume the session on.
pub type Reconnect<S> =
    Arc<dyn Fn() -> futures_util::future::BoxFuture<'static, Result<S, ClientError>> + Send + Sync>;

/// What a session needs to survive a lost connection and to detach.
pub struct Resumption<S> {
    /// Opens a new connection.
    pub reconnect: Reconnect<S>,
    /// The URL, authority and command, for the record of a detached session.
    pub url: String,
    /// See `url`.
    pub authority: String,
    /// See `url`.
    pub command: Vec<String>,
    /// Show the one-line "reconnecting" status on stderr.
    pub show_status: bool,
    /// Called once the server has taken a re-attaching client back (the
    /// saved record is spent then).
    pub on_attached: Option<Box<dyn FnOnce() + Send>>,
}

impl<S> std::fmt::Debug for Resumption<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Resumption")
            .field("url", &self.url)
            .finish_non_exhaustive()
    }
}

/// The resume state of a session opened with the `resume` capability.
struct ResumeState {
    session_id: String,
    token: Vec<u8>,
    grace: Duration,
    detach_secs: u32,
}

/// Most bytes of frames the client keeps for a server that does not
/// acknowledge them; more is a violation.
pub const MAX_UNACKED: u64 = 64 * 1024 * 1024;
/// Longest wait between two attempts to resume.
const MAX_RETRY_DELAY: Duration = Duration::from_secs(5);
/// On detach, how long requests in flight may take to finish before the
/// rest (those waiting for the user) are given up.
const DETACH_SETTLE: Duration = Duration::from_secs(1);
/// Slack on top of the server's grace period before giving up resuming.
const GRACE_MARGIN: Duration = Duration::from_secs(5);
/// Longest the client tries to resume, whatever grace period the server
/// announces (a hostile one could announce years).
pub const MAX_RESUME_WINDOW: Duration = Duration::from_secs(15 * 60);

/// A resume in progress: the new connection and the server's answer.
type Reconnecting<S> =
    futures_util::future::BoxFuture<'static, Result<(Link<S>, Resumed), ClientError>>;

/// One connection's halves.
struct Link<S: Socket> {
    sink: Sink<S>,
    source: Source<S>,
}

/// What the session loop does after an event.
enum Flow {
    Continue,
    /// The session is over.
    Done(Result<Finish, ClientError>),
    /// The connection failed; resume if possible.
    Lost(String),
}

/// How the loop finished without an error.
enum Finish {
    Exit(u8),
    Detach { token: Vec<u8>, keep_secs: u32 },
}

/// Lost connections are resumable; anything else ends the session.
fn flow_of(error: ClientError) -> Flow {
    match error {
        ClientError::ConnectionLost(reason) => Flow::Lost(reason),
        other => Flow::Done(Err(other)),
    }
}

/// Runs a session: a new one, or one re-attached; with `resumption`, it
/// survives lost connections (within the server's grace period) and the
/// user can detach from it.
pub async fn run_with<S>(
    socket: S,
    start: Start,
    io: LocalIo,
    config: &SessionConfig,
    resumption: Option<Resumption<S>>,
) -> Result<Ended, ClientError>
where
    S: Socket,
{
    if !config.handle_signals {
        return run_session(socket, start, io, config, resumption).await;
    }
    let (told, exit_now) = tokio::sync::watch::channel(None);
    let told = Arc::new(told);
    let state = SessionState::default();
    let tell = {
        let told = told.clone();
        move |exit| {
            told.send_replace(Some(exit));
        }
    };
    let signals = SignalWatch::start(state.clone(), tell, |exit| {
        last_resort::end_process(&exit.into(), "the session did not end when told")
    })
    .map_err(|error| ClientError::Config(format!("cannot watch for signals: {error}")))?;
    let disconnects = tokio::spawn(watch_disconnects(
        told,
        crate::keys::pump().watch_disconnects(),
    ));
    let watch = ExitWatch {
        told: exit_now,
        state,
    };
    let ended = EXIT_NOW
        .scope(watch, run_session(socket, start, io, config, resumption))
        .await;
    disconnects.abort();
    drop(signals);
    ended
}

/// What a session's sends and waits learn from the signals that end the
/// client ([`SignalWatch`]) and from `~.` ([`watch_disconnects`]).
#[derive(Debug, Clone)]
struct ExitWatch {
    /// Set once the user said the client must end: sends stop waiting for
    /// a server that takes no data.
    told: tokio::sync::watch::Receiver<Option<ExitNow>>,
    /// What the signal watch needs to know of the session.
    state: SessionState,
}

tokio::task_local! {
    static EXIT_NOW: ExitWatch;
}

/// Tells the signal watch that the session is open: Ctrl-C is the app's now.
fn session_opened() {
    let _ = EXIT_NOW.try_with(|watch| {
        watch.state.opened.store(true, Ordering::Release);
    });
}

/// Tells the signal watch that the session's loop is over: what is left is
/// writing out what it must, which may take longer than its grace.
fn session_ending() {
    let _ = EXIT_NOW.try_with(|watch| {
        watch.state.ending.store(true, Ordering::Release);
    });
}

/// Tells `told` when `~.` is typed (a change of `disconnects`), which the
/// session's loop cannot hear while a send holds it up.
async fn watch_disconnects(
    told: Arc<tokio::sync::watch::Sender<Option<ExitNow>>>,
    mut disconnects: tokio::sync::watch::Receiver<u64>,
) {
    if disconnects.changed().await.is_ok() {
        // Ending: the key pump's last resort waits a little longer.
        crate::keys::pump().disconnect_seen();
        told.send_replace(Some(ExitNow::Disconnected));
    }
}

/// `sending`, unless a signal says the client must end first
/// ([`EXIT_NOW`]).
async fn unless_told_to_exit<T>(
    sending: impl Future<Output = Result<T, ClientError>>,
) -> Result<T, ClientError> {
    until_told_to_exit(sending)
        .await
        .unwrap_or_else(|exit| Err(exit.into()))
}

/// Closes the connection, waiting a second at most, and not at all once a
/// signal says the client must end.
async fn close_link<S: Socket>(sink: &mut Sink<S>) {
    let closing = tokio::time::timeout(Duration::from_secs(1), sink.close());
    let _ = until_told_to_exit(closing).await;
}

/// `work`'s output, or why a signal says the client must end first.
async fn until_told_to_exit<T>(work: impl Future<Output = T>) -> Result<T, ExitNow> {
    let Ok(mut exit_now) = EXIT_NOW.try_with(|watch| watch.told.clone()) else {
        return Ok(work.await);
    };
    let told = async move {
        let exit = exit_now
            .wait_for(Option::is_some)
            .await
            .ok()
            .and_then(|exit| *exit);
        match exit {
            Some(exit) => exit,
            // The watch ended without a signal: nothing will come.
            None => std::future::pending().await,
        }
    };
    tokio::select! {
        result = work => Ok(result),
        exit = told => Err(exit),
    }
}

async fn run_session<S>(
    socket: S,
    start: Start,
    io: LocalIo,
    config: &SessionConfig,
    resumption: Option<Resumption<S>>,
) -> Result<Ended, ClientError>
where
    S: Socket,
{
    let (mut sink, mut source) = split(socket);
    let mut resumption = resumption;
    let mut initial: Vec<ClientFrame> = Vec::new();
    // The round trip of the first request and its answer: how far the
    // server is, for the growth of the output windows.
    let asked = std::time::Instant::now();
    let (window, max_chunk, rtt, mut resume, mut receipts, mut replay) = match start {
        Start::Hello(mut hello) => {
            if resumption.is_some() && !hello.capabilities.iter().any(|c| c == resume::CAPABILITY) {
                hello.capabilities.push(resume::CAPABILITY.to_owned());
            }
            let window = hello.window;
            let max_chunk = hello.max_chunk as usize;
            let welcome =
                unless_told_to_exit(open_session(&mut sink, &mut source, *hello, config)).await?;
            session_opened();
            let rtt = asked.elapsed();
            config.resources.set_session(&welcome.session_id);
            tracing::info!(session = %welcome.session_id, version = welcome.version, server = %welcome.server.name, "session open");
            let resume = match (welcome.resume, &resumption) {
                (Some(ticket), Some(_)) => Some(ResumeState {
                    session_id: welcome.session_id,
                    token: ticket.token.into_vec(),
                    grace: Duration::from_secs(ticket.grace_secs.into()).min(MAX_RESUME_WINDOW),
                    detach_secs: ticket.detach_secs,
                }),
                _ => None,
            };
            let replay = resume.as_ref().map(|_| ReplayBuffer::<Bytes>::new());
            (window, max_chunk, rtt, resume, Receipts::new(), replay)
        }
        Start::Attach(record) => {
            let resumed =
                unless_told_to_exit(attach_session(&mut sink, &mut source, &record, config))
                    .await?;
            session_opened();
            let rtt = asked.elapsed();
            if let Some(attached) = resumption.as_mut().and_then(|r| r.on_attached.take()) {
                attached();
            }
            let mut replay = ReplayBuffer::restore(
                record.sent,
                record
                    .unacked
                    .into_iter()
                    .map(|frame| Bytes::from(frame.0))
                    .collect(),
            );
            let missing = replay
                .replay_after(resumed.received)
                .map_err(|error| ClientError::Protocol(format!("cannot re-attach: {error}")))?;
            // The ack tells the server this client has the new token.
            let ack = codec::encode(&ClientFrame::Ack(Ack {
                seq: record.received,
            }));
            send_encoded(
                &mut sink,
                std::iter::once(Bytes::from(ack)).chain(missing).collect(),
            )
            .await?;
            config.resources.set_session(&record.session_id);
            tracing::info!(session = %record.session_id, "re-attached");
            // This terminal may not be the size of the one that detached.
            if config.stdin_is_terminal || config.handle_signals {
                initial.push(ClientFrame::Signal(Signal {
                    signal: SignalKind::Resize,
                    size: crate::facts::terminal_size(),
                }));
            }
            let resume = ResumeState {
                session_id: record.session_id,
                token: resumed.token.into_vec(),
                grace: Duration::from_secs(record.grace_secs.into()).min(MAX_RESUME_WINDOW),
                detach_secs: record.detach_secs,
            };
            (
                record.window,
                record.max_chunk as usize,
                rtt,
                Some(resume),
                Receipts::restore(record.received),
                Some(replay),
            )
        }
    };
    let mut link = Some(Link { sink, source });
    let show_status = resumption.as_ref().is_some_and(|r| r.show_status);

    let (events_tx, mut events) = mpsc::unbounded_channel();
    let mut pipes = [
        OutputPipe::spawn(
            0,
            StreamId::STDOUT,
            "stdout",
            io.stdout,
            window,
            events_tx.clone(),
            config.resources.output_gate(),
        ),
        OutputPipe::spawn(
            1,
            StreamId::STDERR,
            "stderr",
            io.stderr,
            window,
            events_tx,
            config.resources.output_gate(),
        ),
    ];
    for pipe in &mut pipes {
        pipe.size_window(window, rtt);
    }
    let stdin = Arc::new(Mutex::new(BufReader::with_capacity(
        MAX_STDIN_CHUNK,
        io.stdin,
    )));
    // Stdin requests take their turns in the order they arrived (each task
    // waits for the one before it): reads in flight at once get the input
    // in the order the server asked for it, and prompts show in that order.
    let mut stdin_turn: Option<tokio::sync::oneshot::Receiver<()>> = None;
    let requests = Arc::new(Semaphore::new(config.max_requests_in_flight));
    let (responses_tx, mut responses) =
        mpsc::channel::<Response>(config.max_requests_in_flight.max(1));
    // Keys typed in raw mode: Ctrl-\ detaches a resumable session, `~.`
    // ends any (`keys`).
    let keys = crate::keys::pump();
    keys.set_detach_key(resume.is_some());
    let mut escapes = typed_escapes(keys);
    let mut heartbeat =
        tokio::time::interval_at(Instant::now() + config.heartbeat, config.heartbeat);
    // The server's idle deadline, moved only when it passes, and one timer
    // for the nearest deadline (`liveness`: a new `Sleep` per turn would
    // register with the timer wheel on every message).
    let mut idle_watch = IdleWatch::new(config.idle_timeout, Instant::now());
    // On `std`'s clock: tokio's stands still while tasks run in tests that
    // pause time, and lingering would never end.
    let mut linger = Linger::with_budget(config.linger);
    // The same after output written at once (a file, `/dev/null`): while the
    // server streams, its next chunk comes within microseconds, and a client
    // that slept between chunks had the server pay a wake-up of its idle CPU
    // in each send (figure 2 in `bench/PROFILE.md`). The next chunk is what
    // answers a written one.
    let mut output_linger = Linger::with_budget(config.linger);
    let timer = tokio::time::sleep_until(idle_watch.deadline());
    tokio::pin!(timer);
    let mut alarm = Alarm::new();
    let mut signals = if config.handle_signals {
        Some(WokenOnly::new(Signals::new().map_err(|error| {
            ClientError::Config(format!("cannot watch for signals: {error}"))
        })?))
    } else {
        None
    };
    let mut interrupts = Interrupts::default();
    let mut in_flight = tokio::task::JoinSet::new();
    // Requests being performed, so a detach can answer them.
    let mut running: HashSet<u64> = HashSet::new();
    // How to tell a running read of input that the server cancelled it.
    let mut cancels: HashMap<u64, tokio::sync::oneshot::Sender<()>> = HashMap::new();
    let mut recent = RecentRequests::new();
    // Answers of requests done at once, not sent yet.
    let mut ready: Vec<Response> = Vec::new();
    let mut ack_deadline: Option<Instant> = None;
    let ack_delay = Duration::from_millis(resume::ACK_DELAY_MS);
    let mut reconnecting: Option<Reconnecting<S>> = None;
    let mut detach_requested = false;

    if !initial.is_empty() {
        let outgoing = encode_all(&initial, replay.as_mut());
        transmit(&mut link, outgoing).await?;
    }

    // Loop turns since `ready` got its first answer: while messages keep
    // coming, `Settle` never fires, so the answers leave after this many.
    let mut ready_turns = 0usize;
    // An acknowledgement due while answers were ready: it leaves with them,
    // in the same write (one in 32 requests would otherwise cost a send).
    let mut ack_with_answers: Option<u64> = None;
    // A message found waiting while answers were ready (see `drained`).
    let mut waiting: Option<Result<Option<(Incoming, usize)>, ClientError>> = None;
    // Shared by every request's work: a clone of `Resources` per request
    // (paths, the audit log's state) cost more than a small request itself.
    let shared_resources = Arc::new(config.resources.clone());
    let result: Result<Finish, ClientError> = loop {
        ready_turns = if ready.is_empty() { 0 } else { ready_turns + 1 };
        let idle = link.is_some().then_some(idle_watch.deadline());
        let nearest = match (ack_deadline, idle) {
            (Some(ack), Some(idle)) => Some(ack.min(idle)),
            (ack, idle) => ack.or(idle),
        };
        if let Some(at) = alarm.rearm(nearest) {
            timer.as_mut().reset(at);
        }
        // Answers are ready and no message is left to read: they leave at
        // once, without the extra turn of the runtime that `Settle` takes (a
        // poll of the reactor for each request done one at a time). A
        // message found instead is kept for the next turn, and the answers
        // wait for it.
        let drained = !ready.is_empty()
            && waiting.is_none()
            && match next_message_on(&mut link).now_or_never() {
                Some(message) => {
                    // Heard from: the idle alarm must not call the link
                    // silent while this message waits for its turn.
                    idle_watch.heard(Instant::now());
                    waiting = Some(message);
                    false
                }
                None => true,
            };
        let flow = tokio::select! {
            signal = next_signal(&mut signals) => match signal {
                // A second Ctrl-C soon after the first: the user wants out now.
                LocalSignal::Interrupt if interrupts.second(std::time::Instant::now()) => {
                    Flow::Done(Err(ClientError::Interrupted))
                }
                LocalSignal::Interrupt => {
                    // The terminal echoes nothing for Ctrl-C at a password
                    // prompt (echo is off): what comes next, the app's words
                    // or the shell's prompt, starts a line of its own.
                    if crate::terminal::password_read_in_progress() {
                        let _ = pipes[1].push(Chunk::Local(b"\n".to_vec()));
                    }
                    let frame = ClientFrame::Signal(Signal { signal: SignalKind::Interrupt, size: None });
                    send_frames(&mut link, replay.as_mut(), &[frame]).await
                }
                LocalSignal::Resize => {
                    let frame = ClientFrame::Signal(Signal {
                        signal: SignalKind::Resize,
                        size: crate::facts::terminal_size(),
                    });
                    send_frames(&mut link, replay.as_mut(), &[frame]).await
                }
                LocalSignal::Detach => request_detach(&mut link, &resume, &pipes, &mut detach_requested).await,
                LocalSignal::Terminate(number) => Flow::Done(Err(ClientError::Terminated(number))),
                LocalSignal::Continued => {
                    // Stopped (Ctrl-Z at a password prompt), the shell set
                    // the terminal for itself; the read or raw mode still
                    // going on needs it set again.
                    if let Err(error) = crate::terminal::reassert() {
                        tracing::warn!(%error, "cannot set the terminal again after a stop");
                    }
                    Flow::Continue
                }
            },
            Some(escape) = escapes.next() => match escape {
                Escape::Detach => request_detach(&mut link, &resume, &pipes, &mut detach_requested).await,
                Escape::Disconnect => {
                    keys.disconnect_seen();
                    Flow::Done(Err(ClientError::Disconnected))
                }
            },
            message = next_or_waiting(&mut waiting, &mut link) => {
                idle_watch.heard(Instant::now());
                let (incoming, len) = match message {
                    Ok(Some(frame)) => frame,
                    Ok(None) => continue,
                    Err(ClientError::Protocol(message)) => break Err(violation_on(&mut link, message).await),
                    Err(error) => {
                        match flow_of(error) {
                            Flow::Lost(reason) => {
                                if let Err(error) = lose_link(&mut link, &resume, &resumption, &mut reconnecting, &receipts, config, show_status, &pipes, reason) {
                                    break Err(error);
                                }
                                continue;
                            }
                            Flow::Done(result) => break result,
                            Flow::Continue => continue,
                        }
                    }
                };
                // The server's next request is what answers the client's
                // answers; output says nothing of how fast it comes.
                if matches!(incoming, Incoming::Frame(ServerFrame::Request(_))) {
                    linger.heard(std::time::Instant::now());
                }
                let sequenced = replay.is_some() && incoming.is_sequenced();
                let mut flow = match incoming {
                    Incoming::Chunk(sid, bytes) => {
                        let arrived = std::time::Instant::now();
                        match take_chunk(&mut pipes, sid, bytes, max_chunk) {
                            Ok((_, Pushed::Queued)) => Flow::Continue,
                            Ok((index, Pushed::Written(len))) => {
                                // The gap is from one chunk written to the next
                                // one's arrival, without the write.
                                output_linger.heard(arrived);
                                output_linger.sent(std::time::Instant::now());
                                match pipes[index].consumed(len) {
                                    Some(grant) => send_frames(&mut link, replay.as_mut(), &[grant]).await,
                                    None => Flow::Continue,
                                }
                            }
                            Ok((index, Pushed::Failed(error))) => {
                                Flow::Done(Err(output_failed(pipes[index].name, index, error)))
                            }
                            Err(message) => Flow::Done(Err(violation_on(&mut link, message).await)),
                        }
                    }
                    Incoming::Frame(frame) => match frame {
                        ServerFrame::Request(request) => match recent.begin(request.id.0) {
                            Seen::New => {
                                if let Ok(permit) = requests.clone().try_acquire_owned() {
                                    running.insert(request.id.0);
                                    let id = request.id;
                                    let op = request.op;
                                    // A panic here (a bug) ends the session as one in a
                                    // request's task does, not the whole client at once.
                                    let now = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| shared_resources.perform_now(op)));
                                    match now.map_err(|panic| request_panicked(panic.as_ref())) {
                                        Err(error) => Flow::Done(Err(error)),
                                        // A stat-class request is answered here and now: no
                                        // future, no task, and its answer leaves with the others.
                                        Ok(Ok(result)) => {
                                            drop(permit);
                                            ready.push(match result {
                                                Ok(reply) => Response::ok(id, reply),
                                                Err(error) => Response::error(id, error),
                                            });
                                            // `ready` is bounded: it leaves at MAX_ANSWER_BATCH.
                                            if ready.len() >= MAX_ANSWER_BATCH {
                                                let answers = answer(std::mem::take(&mut ready), &mut running, &mut recent, replay.as_mut());
                                                send_answers(&mut link, answers, ack_with_answers.take(), &mut linger).await
                                            } else {
                                                Flow::Continue
                                            }
                                        }
                                        // May wait for something (stdin, consent): a task of its own.
                                        Ok(Err(op)) => {
                                            let turn = reads_stdin(&op).then(|| {
                                                let (done, next) = tokio::sync::oneshot::channel::<()>();
                                                (stdin_turn.replace(next), done)
                                            });
                                            let mut cancel = if cancellable(&op) {
                                                // Those of reads that ended go first: the map stays
                                                // as small as the reads in flight.
                                                cancels.retain(|_, told| !told.is_closed());
                                                let (told, watch) = tokio::sync::oneshot::channel();
                                                cancels.insert(id.0, told);
                                                CancelWatch::Open(watch)
                                            } else {
                                                CancelWatch::Never
                                            };
                                            let request = Request { id, op };
                                            let stdin = stdin.clone();
                                            let prompts = pipes[1].prompt_sink();
                                            let resources = shared_resources.clone();
                                            let stdin_is_terminal = config.stdin_is_terminal;
                                            let responses = responses_tx.clone();
                                            in_flight.spawn(async move {
                                                // Dropped, `done` gives the next its turn.
                                                let (before, _done) = turn.unzip();
                                                if let Some(mut before) = before.flatten() {
                                                    let waited = cancel.unless_cancelled(&mut before).await;
                                                    if waited.is_err() {
                                                        let _ = responses.send(Response::error(id, CancelWatch::error())).await;
                                                        drop(permit);
                                                        // The turn passes on in order all the same.
                                                        let _ = before.await;
                                                        return;
                                                    }
                                                }
                                                let response = perform(request, &stdin, prompts, &resources, stdin_is_terminal, &mut cancel).await;
                                                let _ = responses.send(response).await;
                                                // The permit goes with the answer until it is queued.
                                                drop(permit);
                                            });
                                            Flow::Continue
                                        }
                                    }
                                } else {
                                    let message = format!("more than {} requests in flight", config.max_requests_in_flight);
                                    Flow::Done(Err(violation_on(&mut link, message).await))
                                }
                            }
                            // Never executed twice: the answer will come, or is sent again.
                            Seen::Running => Flow::Continue,
                            Seen::Answered(answer) => {
                                let outgoing = vec![(Bytes::from(answer), true)];
                                transmit(&mut link, keep(outgoing, replay.as_mut())).await.map_or_else(flow_of, |()| Flow::Continue)
                            }
                            Seen::AnsweredNotKept => {
                                let response = Response::error(request.id, OpError::new(
                                    ErrorCode::Invalid,
                                    format!("request {} was already executed; its answer is no longer kept", request.id.0),
                                ));
                                send_frames(&mut link, replay.as_mut(), &[ClientFrame::Response(response)]).await
                            }
                        },
                        ServerFrame::Cancel(cancel) => {
                            // Nothing to do for a request answered already
                            // or one that cannot be cancelled.
                            if let Some(told) = cancels.remove(&cancel.id.0) {
                                let _ = told.send(());
                            }
                            Flow::Continue
                        }
                        ServerFrame::Exit(exit) => Flow::Done(Ok(Finish::Exit(exit.status))),
                        ServerFrame::Error(error) => Flow::Done(Err(server_error(error))),
                        // No client → server stream is open yet; credit for one is harmless.
                        ServerFrame::Window(_) => Flow::Continue,
                        ServerFrame::Ack(ack) => match replay.as_mut().map(|replay| replay.ack(ack.seq)) {
                            Some(Ok(())) | None => Flow::Continue,
                            Some(Err(error)) => Flow::Done(Err(violation_on(&mut link, error.to_string()).await)),
                        },
                        ServerFrame::Detached(detached) if detach_requested => {
                            detach_requested = false;
                            if detached.accepted {
                                let token = detached
                                    .token
                                    .map(ByteBuf::into_vec)
                                    .or_else(|| resume.as_ref().map(|r| r.token.clone()))
                                    .unwrap_or_default();
                                Flow::Done(Ok(Finish::Detach { token, keep_secs: detached.keep_secs }))
                            } else {
                                let why = detached.message.unwrap_or_else(|| "the server refused".into());
                                let why = crate::inert::inert(&why);
                                let _ = pipes[1].push(Chunk::Local(format!("terminalwire: cannot detach: {why}\n").into_bytes()));
                                Flow::Continue
                            }
                        }
                        other => {
                            let message = format!("unexpected {} frame", frame_name(&other));
                            Flow::Done(Err(violation_on(&mut link, message).await))
                        }
                    },
                };
                // A frame handled counts as received, even when a send
                // that followed found the connection lost (the grant due
                // after output written at once, answers): not counted, it
                // would come again after the resume and be handled twice
                // (the output written twice). The resume says the count.
                if sequenced && matches!(flow, Flow::Lost(_)) {
                    let _ = receipts.on_frame(len);
                } else if sequenced && matches!(flow, Flow::Continue | Flow::Done(Ok(Finish::Exit(_)))) {
                    let exit = matches!(flow, Flow::Done(_));
                    let due = receipts.on_frame(len);
                    // The server keeps the session until it knows the exit arrived.
                    let due = if exit { receipts.pending().or(due) } else { due };
                    if let Some(seq) = due {
                        ack_deadline = None;
                        if !exit && !ready.is_empty() {
                            // Answers leave within a turn or two: with them.
                            ack_with_answers = Some(seq);
                        } else {
                            let sent = send_frames(&mut link, None, &[ClientFrame::Ack(Ack { seq })]).await;
                            if !exit {
                                flow = sent;
                            }
                        }
                    } else if ack_deadline.is_none() {
                        ack_deadline = Some(Instant::now() + ack_delay);
                    }
                }
                if let Some(replay) = &replay
                    && replay.bytes() > MAX_UNACKED
                    && link.is_some()
                {
                    let message = format!("the server acknowledges nothing: {} bytes await acknowledgement", replay.bytes());
                    flow = Flow::Done(Err(violation_on(&mut link, message).await));
                }
                flow
            }
            resumed = poll_reconnect(&mut reconnecting) => {
                reconnecting = None;
                match resumed {
                    Err(error) => Flow::Done(Err(error)),
                    Ok((new_link, resumed)) => {
                        let resume_state = resume.as_mut().expect("reconnecting implies resume");
                        resume_state.token = resumed.token.into_vec();
                        receipts.acknowledged_all();
                        ack_with_answers = None;
                        ack_deadline = None;
                        idle_watch.restart(Instant::now());
                        heartbeat.reset();
                        link = Some(new_link);
                        tracing::info!(server_received = resumed.received, "session resumed");
                        let replay = replay.as_mut().expect("reconnecting implies resume");
                        match replay.replay_after(resumed.received) {
                            Err(error) => Flow::Done(Err(violation_on(&mut link, format!("cannot resume: {error}")).await)),
                            Ok(missing) => {
                                // The ack first: it tells the server this client
                                // has the new token.
                                let ack = ClientFrame::Ack(Ack { seq: receipts.received() });
                                let mut outgoing: Vec<(Bytes, bool)> = vec![(codec::encode(&ack).into(), false)];
                                outgoing.extend(missing.into_iter().map(|bytes| (bytes, false)));
                                if detach_requested {
                                    outgoing.push((codec::encode(&ClientFrame::Detach(Detach {})).into(), false));
                                }
                                transmit(&mut link, outgoing).await.map_or_else(flow_of, |()| Flow::Continue)
                            }
                        }
                    }
                }
            }
            Some(event) = events.recv() => match event {
                Event::Consumed { index, len } => match pipes[index].consumed(len) {
                    Some(grant) => send_frames(&mut link, replay.as_mut(), &[grant]).await,
                    None => Flow::Continue,
                },
                Event::Failed { index, error } => {
                    Flow::Done(Err(output_failed(pipes[index].name, index, error)))
                }
            },
            // Reap finished request tasks so the set stays small. One that
            // panicked (a bug in the client) ends the session: its request
            // will never be answered, and the panic hook has restored the
            // terminal under the app.
            Some(joined) = in_flight.join_next(), if !in_flight.is_empty() => match joined {
                Err(error) if error.is_panic() => Flow::Done(Err(request_panicked(error.into_panic().as_ref()))),
                _ => Flow::Continue,
            },
            // Answers given at once leave together, once no message waits.
            () = Settle(drained || ready_turns > MAX_ANSWER_BATCH), if !ready.is_empty() => {
                let answers = answer(std::mem::take(&mut ready), &mut running, &mut recent, replay.as_mut());
                send_answers(&mut link, answers, ack_with_answers.take(), &mut linger).await
            }
            Some(response) = responses.recv() => {
                // Answers that are ready together leave in one flush.
                let mut batch = vec![response];
                while batch.len() < MAX_ANSWER_BATCH {
                    match responses.try_recv() {
                        Ok(more) => batch.push(more),
                        Err(_) => break,
                    }
                }
                let answers = answer(batch, &mut running, &mut recent, replay.as_mut());
                send_answers(&mut link, answers, ack_with_answers.take(), &mut linger).await
            }
            // The server answers or streams fast: poll for its next message
            // a little while rather than sleep (`linger`). Only once the
            // answers left.
            () = tokio::task::yield_now(), if ready.is_empty() && awake(&linger, &output_linger) => Flow::Continue,
            _ = heartbeat.tick(), if link.is_some() => {
                match &mut link {
                    Some(current) => send_message(&mut current.sink, Message::Ping(Vec::new().into())).await.map_or_else(flow_of, |()| Flow::Continue),
                    None => Flow::Continue,
                }
            }
            () = &mut timer, if alarm.is_armed() => {
                alarm.fired();
                let now = Instant::now();
                let passed = |deadline: Option<Instant>| deadline.is_some_and(|at| at <= now);
                if passed(ack_deadline) {
                    ack_deadline = None;
                    match receipts.pending() {
                        Some(seq) if link.is_some() => send_frames(&mut link, None, &[ClientFrame::Ack(Ack { seq })]).await,
                        _ => Flow::Continue,
                    }
                } else if passed(idle) {
                    match idle_watch.deadline_passed(now) {
                        // Heard from since: the deadline moved, the session goes on.
                        Idle::Moved => Flow::Continue,
                        Idle::Silent => Flow::Lost(format!("no sign of life from the server for {:?}", config.idle_timeout)),
                    }
                } else {
                    // The deadline it was set for moved or went away.
                    Flow::Continue
                }
            }
        };
        match flow {
            Flow::Continue => {}
            Flow::Done(result) => break result,
            Flow::Lost(reason) => {
                // A session that cannot resume: the server's exit may be
                // here already (sent before it closed, while this client
                // was sending).
                if (resume.is_none() || resumption.is_none())
                    && let Some(result) =
                        last_words(&mut waiting, &mut link, &mut pipes, max_chunk).await
                {
                    break result;
                }
                // A message kept from the lost link was not counted as
                // received: the server sends it again after resuming, and
                // handled now as well it would be handled twice.
                waiting = None;
                if let Err(error) = lose_link(
                    &mut link,
                    &resume,
                    &resumption,
                    &mut reconnecting,
                    &receipts,
                    config,
                    show_status,
                    &pipes,
                    reason,
                ) {
                    break Err(error);
                }
            }
        }
    };
    session_ending();

    let result: Result<u8, ClientError> = match result {
        Ok(Finish::Exit(status)) => Ok(status),
        Err(error) => Err(error),
        Ok(Finish::Detach { token, keep_secs }) => {
            // Answers that are ready go out; requests still waiting (for input,
            // say) are given up and answered so, since this process will not
            // answer them later.
            let mut batch = std::mem::take(&mut ready);
            while let Ok(response) = responses.try_recv() {
                batch.push(response);
            }
            // Requests that are just running (a file write, say) finish, so
            // their effect and their answer agree; the ones still waiting
            // after that wait for the user, and are given up.
            let settle = async { while in_flight.join_next().await.is_some() {} };
            let _ = tokio::time::timeout(DETACH_SETTLE, settle).await;
            tracing::debug!(
                left = in_flight.len(),
                "detaching: giving up requests in flight"
            );
            in_flight.abort_all();
            while in_flight.join_next().await.is_some() {}
            while let Ok(response) = responses.try_recv() {
                batch.push(response);
            }
            let mut outgoing = answer(batch, &mut running, &mut recent, replay.as_mut());
            let cancelled: Vec<ClientFrame> = running
                .drain()
                .map(|id| {
                    ClientFrame::Response(Response::error(
                        terminalwire_protocol::RequestId(id),
                        OpError::new(
                            ErrorCode::Cancelled,
                            "the user detached before this finished",
                        ),
                    ))
                })
                .collect();
            outgoing.extend(encode_all(&cancelled, replay.as_mut()));
            let _ = crate::terminal::restore();
            config.resources.end_session();
            // Output received before the detach is written out, and its credit
            // given back, so that the next client starts with a full window.
            tracing::debug!("detaching: writing out the output");
            let grants = drain_outputs(&mut pipes, &mut events, config.flush_timeout).await?;
            outgoing.extend(encode_all(&grants, replay.as_mut()));
            // The server now holds the same window on every stream (see
            // `drain_outputs`): the next client starts from it.
            let window = pipes[0].window.window();
            // Tells the server this client has the token in `detached`.
            let ack = ClientFrame::Ack(Ack {
                seq: receipts.received(),
            });
            outgoing.push((codec::encode(&ack).into(), false));
            tracing::debug!(frames = outgoing.len(), "detaching: last frames");
            let _ = transmit(&mut link, outgoing).await;
            if let Some(mut current) = link.take() {
                close_link(&mut current.sink).await;
            }
            let (Some(resume), Some(resumption), Some(replay)) = (resume, resumption, replay)
            else {
                return Err(ClientError::Protocol(
                    "detached without a resumable session".into(),
                ));
            };
            let record = SessionRecord {
                session_id: resume.session_id,
                url: resumption.url,
                authority: resumption.authority,
                command: resumption.command,
                token: crate::detached::Bytes64(token),
                received: receipts.received(),
                sent: replay.sent(),
                unacked: replay
                    .unacked()
                    .map(|bytes| crate::detached::Bytes64(bytes.to_vec()))
                    .collect(),
                window,
                max_chunk: u32::try_from(max_chunk).unwrap_or(u32::MAX),
                grace_secs: u32::try_from(resume.grace.as_secs()).unwrap_or(u32::MAX),
                detach_secs: keep_secs,
                detached_at: crate::detached::now(),
            };
            return Ok(Ended::Detached(Box::new(record)));
        }
    };

    // Requests still running (a prompt waiting for a line, say) end with
    // the session: dropping them restores echo and releases the stderr
    // queue they hold, so the output writers can finish.
    in_flight.abort_all();
    while in_flight.join_next().await.is_some() {}
    // Whatever the end, the terminal goes back to the settings it was found
    // with and unfinished streamed writes are dropped.
    let _ = crate::terminal::restore();
    config.resources.end_session();

    // Write out everything received before the end, whatever the end was.
    let flush_timeout = match result {
        // The user wants out now.
        Err(ClientError::Interrupted | ClientError::Disconnected | ClientError::Terminated(_)) => {
            Duration::ZERO
        }
        _ => config.flush_timeout,
    };
    tracing::debug!("writing out the output");
    let flushed = finish_outputs(&mut pipes, &mut events, result.is_ok(), flush_timeout).await;
    if let Some(mut current) = link.take() {
        if let Err(
            error @ (ClientError::Interrupted
            | ClientError::Disconnected
            | ClientError::Terminated(_)
            | ClientError::Internal(_)),
        ) = &result
        {
            say_goodbye(&mut current.sink, error).await;
        }
        close_link(&mut current.sink).await;
    }
    match (result, flushed) {
        (Ok(status), Ok(())) => Ok(Ended::Exit(status)),
        (Ok(_), Err(error)) => Err(error),
        (Err(error), _) => Err(error),
    }
}

/// Tells the server the user ended the client on purpose (`error`,
/// `cancelled`), or that a bug in the client did (`error`, `internal`), so
/// that it cancels the command now instead of keeping the session for a
/// resume that will not come. Waits briefly: a server that takes no data
/// does not hold up an exit the user asked for.
async fn say_goodbye<S: Socket>(sink: &mut Sink<S>, why: &ClientError) {
    let goodbye = ClientFrame::Error(match why {
        ClientError::Internal(_) => SessionError {
            code: ErrorCode::Internal,
            message: "the client failed with an internal error".to_owned(),
        },
        _ => SessionError {
            code: ErrorCode::Cancelled,
            message: format!("the user ended the client ({why})"),
        },
    });
    let message = Message::Binary(codec::encode(&goodbye).into());
    let _ = tokio::time::timeout(GOODBYE_TIMEOUT, sink.send(message)).await;
}

/// Sends the hello and waits for the welcome.
async fn open_session<S: Socket>(
    sink: &mut Sink<S>,
    source: &mut Source<S>,
    hello: Hello,
    config: &SessionConfig,
) -> Result<terminalwire_protocol::frame::Welcome, ClientError> {
    let arguments = hello.program.args.len();
    let hello = codec::encode(&ClientFrame::Hello(hello));
    // What the server would refuse as no frame at all (over the size or
    // value limits): the user's command line, said so here.
    if let Err(error) = codec::decode::<ClientFrame>(&hello) {
        // Well formed, as encoded here: only a limit can be what is wrong,
        // and "not a frame" would say otherwise.
        let limit = match error {
            codec::DecodeError::NotAFrame { source, .. } => source.to_string(),
            error => error.to_string(),
        };
        return Err(ClientError::Usage(format!(
            "the command line is too long to send ({arguments} arguments, {} bytes encoded): {limit}",
            hello.len()
        )));
    }
    send_message(sink, Message::Binary(hello.into())).await?;
    let welcome = match tokio::time::timeout(config.handshake_timeout, next_frame(source)).await {
        Err(_) => {
            return Err(ClientError::ConnectionLost(format!(
                "the server did not answer the hello within {:?}",
                config.handshake_timeout
            )));
        }
        Ok(frame) => match frame? {
            ServerFrame::Welcome(welcome) => welcome,
            ServerFrame::Incompatible(incompatible) => {
                return Err(ClientError::Incompatible {
                    versions: incompatible.versions.to_string(),
                    message: crate::inert::inert(&incompatible.message).into_owned(),
                });
            }
            ServerFrame::Error(error) => return Err(server_error(error)),
            other => {
                let message = format!("expected welcome, got {}", frame_name(&other));
                return Err(violation(sink, message).await);
            }
        },
    };
    if !SUPPORTED_VERSIONS.contains(welcome.version) {
        let message = format!(
            "the server chose protocol version {}, which this client (versions {SUPPORTED_VERSIONS}) did not offer",
            welcome.version
        );
        return Err(violation(sink, message).await);
    }
    // It names the audit log's lines and a detached session's record.
    if !terminalwire_protocol::frame::valid_session_id(&welcome.session_id) {
        let message = format!(
            "the server's session id is not 1 to {} letters, digits, `-` or `_` ({} bytes)",
            terminalwire_protocol::frame::MAX_SESSION_ID_LEN,
            welcome.session_id.len()
        );
        return Err(violation(sink, message).await);
    }
    Ok(welcome)
}

/// Asks the server to continue a detached session on this connection.
async fn attach_session<S: Socket>(
    sink: &mut Sink<S>,
    source: &mut Source<S>,
    record: &SessionRecord,
    config: &SessionConfig,
) -> Result<Resumed, ClientError> {
    let resume = Resume {
        session_id: record.session_id.clone(),
        token: ByteBuf::from(record.token.0.clone()),
        received: record.received,
    };
    send(sink, &ClientFrame::Resume(resume)).await?;
    match tokio::time::timeout(config.handshake_timeout, next_frame(source)).await {
        Err(_) => Err(ClientError::ConnectionLost(format!(
            "the server did not answer within {:?}",
            config.handshake_timeout
        ))),
        Ok(frame) => match frame? {
            ServerFrame::Resumed(resumed) => Ok(resumed),
            ServerFrame::Error(error) => Err(resume_refused(error)),
            other => {
                let message = format!("expected resumed, got {}", frame_name(&other));
                Err(violation(sink, message).await)
            }
        },
    }
}

fn resume_refused(error: SessionError) -> ClientError {
    match error.code {
        ErrorCode::Expired => ClientError::SessionGone(format!(
            "the session cannot be resumed: {}",
            crate::inert::inert(&error.message)
        )),
        _ => server_error(error),
    }
}

/// Starts resuming after a lost connection, or says why the session ends.
#[allow(clippy::too_many_arguments)]
fn lose_link<S: Socket>(
    link: &mut Option<Link<S>>,
    resume: &Option<ResumeState>,
    resumption: &Option<Resumption<S>>,
    reconnecting: &mut Option<Reconnecting<S>>,
    receipts: &Receipts,
    config: &SessionConfig,
    show_status: bool,
    pipes: &[OutputPipe; 2],
    reason: String,
) -> Result<(), ClientError> {
    let (Some(resume), Some(resumption)) = (resume, resumption) else {
        return Err(ClientError::ConnectionLost(reason));
    };
    *link = None;
    if reconnecting.is_some() {
        return Ok(());
    }
    tracing::info!(%reason, grace = ?resume.grace, "connection lost; resuming");
    if show_status {
        let _ = pipes[1].push(Chunk::Local(
            "terminalwire: connection lost; reconnecting\u{2026}\n"
                .as_bytes()
                .to_vec(),
        ));
    }
    let frame = Resume {
        session_id: resume.session_id.clone(),
        token: ByteBuf::from(resume.token.clone()),
        received: receipts.received(),
    };
    *reconnecting = Some(Box::pin(reconnect_loop(
        resumption.reconnect.clone(),
        frame,
        Instant::now() + resume.grace + GRACE_MARGIN,
        resume.grace,
        config.handshake_timeout,
        reason,
    )));
    Ok(())
}

/// Tries to resume until the server's grace period is over, with backoff.
async fn reconnect_loop<S: Socket>(
    reconnect: Reconnect<S>,
    resume: Resume,
    deadline: Instant,
    grace: Duration,
    handshake_timeout: Duration,
    reason: String,
) -> Result<(Link<S>, Resumed), ClientError> {
    let mut delay = Duration::from_millis(50);
    let mut last_error = reason;
    for attempt in 1u32.. {
        let attempt_once = async {
            let socket = reconnect().await?;
            let (mut sink, mut source) = split(socket);
            send(&mut sink, &ClientFrame::Resume(resume.clone())).await?;
            let answer = tokio::time::timeout(handshake_timeout, next_frame(&mut source))
                .await
                .map_err(|_| {
                    ClientError::ConnectionLost("the server did not answer the resume".into())
                })??;
            match answer {
                ServerFrame::Resumed(resumed) => Ok((Link { sink, source }, resumed)),
                ServerFrame::Error(error) => Err(resume_refused(error)),
                other => Err(ClientError::Protocol(format!(
                    "expected resumed, got {}",
                    frame_name(&other)
                ))),
            }
        };
        match tokio::time::timeout_at(deadline, attempt_once).await {
            Err(_) => break,
            Ok(Ok(resumed)) => return Ok(resumed),
            Ok(Err(error @ (ClientError::ConnectionLost(_) | ClientError::Unavailable { .. }))) => {
                tracing::info!(attempt, %error, "resume attempt failed");
                last_error = error.to_string();
            }
            Ok(Err(error)) => return Err(error),
        }
        if Instant::now() + delay >= deadline {
            break;
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(MAX_RETRY_DELAY);
    }
    Err(ClientError::ConnectionLost(format!(
        "the connection was lost and could not be resumed within the server's grace period of {}s ({last_error})",
        grace.as_secs()
    )))
}

async fn poll_reconnect<S: Socket>(
    reconnecting: &mut Option<Reconnecting<S>>,
) -> Result<(Link<S>, Resumed), ClientError> {
    match reconnecting {
        Some(future) => future.await,
        None => std::future::pending().await,
    }
}

/// Asks the server to detach, when the session allows it; else says why not.
async fn request_detach<S: Socket>(
    link: &mut Option<Link<S>>,
    resume: &Option<ResumeState>,
    pipes: &[OutputPipe; 2],
    detach_requested: &mut bool,
) -> Flow {
    let refusal = match resume {
        None => Some("this session cannot be detached (the server does not offer resuming it)"),
        Some(resume) if resume.detach_secs == 0 => Some("this server does not allow detaching"),
        Some(_) if link.is_none() => Some("cannot detach while reconnecting"),
        Some(_) => None,
    };
    if let Some(refusal) = refusal {
        let _ = pipes[1].push(Chunk::Local(
            format!("terminalwire: {refusal}\n").into_bytes(),
        ));
        return Flow::Continue;
    }
    if *detach_requested {
        return Flow::Continue;
    }
    *detach_requested = true;
    send_frames(link, None, &[ClientFrame::Detach(Detach {})]).await
}

/// Frames encoded, each with whether it was kept for replay.
fn encode_all(
    frames: &[ClientFrame],
    replay: Option<&mut ReplayBuffer<Bytes>>,
) -> Vec<(Bytes, bool)> {
    let encoded = frames
        .iter()
        .map(|frame| (codec::encode(frame).into(), frame.is_sequenced()))
        .collect();
    keep(encoded, replay)
}

/// Keeps the sequenced frames of `outgoing` for replay (when resuming is on).
fn keep(
    outgoing: Vec<(Bytes, bool)>,
    replay: Option<&mut ReplayBuffer<Bytes>>,
) -> Vec<(Bytes, bool)> {
    if let Some(replay) = replay {
        for (bytes, sequenced) in &outgoing {
            if *sequenced {
                replay.push(bytes.clone());
            }
        }
    }
    outgoing
}

/// Encodes responses, remembers them as answered, and keeps them for replay.
fn answer(
    batch: Vec<Response>,
    running: &mut HashSet<u64>,
    recent: &mut RecentRequests,
    replay: Option<&mut ReplayBuffer<Bytes>>,
) -> Vec<(Bytes, bool)> {
    let outgoing = batch
        .into_iter()
        .map(|response| {
            let request_id = response.id;
            let id = request_id.0;
            let mut bytes = codec::encode(&ClientFrame::Response(response));
            // Sealing refuses a frame over the limit, and a failed send of
            // an answer kept for replay would fail again on every resume.
            if bytes.len() > MAX_FRAME_LEN {
                let error = OpError::new(
                    ErrorCode::TooLarge,
                    format!(
                        "the answer takes {} bytes, over the protocol's limit of {MAX_FRAME_LEN}",
                        bytes.len()
                    ),
                );
                bytes = codec::encode(&ClientFrame::Response(Response::error(request_id, error)));
            }
            let bytes = Bytes::from(bytes);
            running.remove(&id);
            recent.finish(id, &bytes);
            (bytes, true)
        })
        .collect();
    keep(outgoing, replay)
}

/// Whether either kind of lingering wants the loop to poll rather than sleep.
fn awake(requests: &Linger<std::time::Instant>, output: &Linger<std::time::Instant>) -> bool {
    let now = std::time::Instant::now();
    requests.awake(now) || output.awake(now)
}

/// Sends encoded answers, after the acknowledgement `ack` when one is due,
/// and lingers for the server's next request.
async fn send_answers<S: Socket>(
    link: &mut Option<Link<S>>,
    answers: Vec<(Bytes, bool)>,
    ack: Option<u64>,
    linger: &mut Linger<std::time::Instant>,
) -> Flow {
    let answers = match ack {
        // Not sequenced: never kept for replay.
        Some(seq) => {
            let mut all = encode_all(&[ClientFrame::Ack(Ack { seq })], None);
            all.extend(answers);
            all
        }
        None => answers,
    };
    linger.sent(std::time::Instant::now());
    transmit(link, answers)
        .await
        .map_or_else(flow_of, |()| Flow::Continue)
}

/// Sends frames (kept for replay first, when resuming is on).
async fn send_frames<S: Socket>(
    link: &mut Option<Link<S>>,
    replay: Option<&mut ReplayBuffer<Bytes>>,
    frames: &[ClientFrame],
) -> Flow {
    let outgoing = encode_all(frames, replay);
    transmit(link, outgoing)
        .await
        .map_or_else(flow_of, |()| Flow::Continue)
}

/// Sends encoded frames on the connection, if there is one; without one they
/// wait in the replay buffer (or, for unsequenced frames, are dropped).
async fn transmit<S: Socket>(
    link: &mut Option<Link<S>>,
    outgoing: Vec<(Bytes, bool)>,
) -> Result<(), ClientError> {
    let Some(current) = link else {
        return Ok(());
    };
    send_encoded(
        &mut current.sink,
        outgoing.into_iter().map(|(bytes, _)| bytes).collect(),
    )
    .await
}

/// Writes out what the output pipes hold (for at most `bound`: a stalled
/// reader must not stop the detach) and returns the grants that give the
/// server back all the credit it used, written out or not, so that the next
/// client starts from a full window.
async fn drain_outputs(
    pipes: &mut [OutputPipe; 2],
    events: &mut mpsc::UnboundedReceiver<Event>,
    bound: Duration,
) -> Result<Vec<ClientFrame>, ClientError> {
    for pipe in pipes.iter_mut() {
        pipe.queue = None;
    }
    let wait = async {
        for pipe in pipes.iter_mut() {
            let _ = (&mut pipe.task).await;
        }
    };
    if tokio::time::timeout(bound, wait).await.is_err() {
        for pipe in pipes.iter() {
            pipe.abort();
        }
        tracing::warn!("output not written out before detaching was dropped");
    }
    while let Ok(event) = events.try_recv() {
        if let Event::Failed { index, error } = event {
            return Err(output_failed(pipes[index].name, index, error));
        }
    }
    // The next client starts every stream from one window, the one in
    // the record: each stream is given back at least the largest, so that
    // the server holds exactly that on each (with less, the next client
    // could wait for more bytes than the server may send, and stall).
    let common = pipes
        .iter()
        .map(|pipe| pipe.window.full_size())
        .max()
        .unwrap_or(0);
    Ok(pipes
        .iter_mut()
        .filter_map(|pipe| {
            pipe.window.grant_all(common).map(|bytes| {
                ClientFrame::Window(WindowAdjust {
                    sid: pipe.sid,
                    bytes,
                })
            })
        })
        .collect())
}

/// The error for a failed output writer: a closed stdout is like a local
/// program's broken pipe.
fn output_failed(stream: &'static str, index: usize, error: io::Error) -> ClientError {
    if index == 0 && error.kind() == io::ErrorKind::BrokenPipe {
        ClientError::BrokenPipe
    } else {
        ClientError::Output {
            stream,
            source: error,
        }
    }
}

/// Closes the output queues and waits for the writers. After a normal exit
/// the wait is unbounded (a slow reader of our stdout is not an error)
/// until the user says to end now (Ctrl-C twice, SIGTERM, `~.`); after a
/// failure it is bounded.
async fn finish_outputs(
    pipes: &mut [OutputPipe; 2],
    events: &mut mpsc::UnboundedReceiver<Event>,
    unbounded: bool,
    bound: Duration,
) -> Result<(), ClientError> {
    for pipe in pipes.iter_mut() {
        pipe.queue = None;
    }
    let wait = async {
        for pipe in pipes.iter_mut() {
            let _ = (&mut pipe.task).await;
        }
    };
    if unbounded {
        if let Err(exit) = until_told_to_exit(wait).await {
            for pipe in pipes.iter() {
                pipe.abort();
            }
            return Err(exit.into());
        }
    } else if tokio::time::timeout(bound, wait).await.is_err() {
        // Nothing more reaches the terminal after the session's end.
        for pipe in pipes.iter() {
            pipe.abort();
        }
        return Ok(());
    }
    while let Ok(event) = events.try_recv() {
        if let Event::Failed { index, error } = event {
            return Err(output_failed(pipes[index].name, index, error));
        }
    }
    Ok(())
}

/// Most answers sent in one flush.
const MAX_ANSWER_BATCH: usize = 64;

/// Pending on its first poll (waking its task at once), ready on the
/// second: in a `select!`, its branch runs only once every other branch
/// was found pending, such as when no message is left to read.
/// `Settle(true)` is ready at once.
struct Settle(bool);

impl Future for Settle {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> Poll<()> {
        if self.0 {
            Poll::Ready(())
        } else {
            self.0 = true;
            cx.waker().wake_by_ref();
            Poll::Pending
        }
    }
}

/// The end of a session in which performing a request panicked.
fn request_panicked(panic: &(dyn std::any::Any + Send)) -> ClientError {
    let what = panic
        .downcast_ref::<&str>()
        .map(|what| (*what).to_owned())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "no message".to_owned());
    ClientError::Internal(format!(
        "performing a request of the server's panicked: {what}"
    ))
}

/// Performs one request and builds its response; never fails the session.
async fn perform(
    request: Request,
    stdin: &Mutex<BufReader<Box<dyn AsyncRead + Send + Unpin>>>,
    prompts: Option<PromptSink>,
    resources: &Resources,
    stdin_is_terminal: bool,
    cancel: &mut CancelWatch,
) -> Response {
    let show = async |prompt: Option<String>| {
        if let (Some(prompt), Some(prompts)) = (prompt, &prompts) {
            prompts.show(prompt).await;
        }
    };
    let result = match request.op {
        Operation::StdinReadLine { prompt } => {
            async {
                if let Some(refused) = oversized(prompt.as_deref()) {
                    return Err(refused);
                }
                let mut stdin = cancel.unless_cancelled(stdin.lock()).await?;
                show(prompt).await;
                if !cancel.unless_cancelled(until_input(&mut *stdin)).await?? {
                    return Ok(Reply::Line { line: None });
                }
                read_line(&mut *stdin).await
            }
            .await
        }
        Operation::StdinReadPassword { prompt } => {
            async {
                if !stdin_is_terminal {
                    return Err(OpError::new(
                        ErrorCode::Unsupported,
                        "stdin is not a terminal, so a password cannot be read without echo",
                    ));
                }
                if let Some(refused) = oversized(prompt.as_deref()) {
                    return Err(refused);
                }
                let mut stdin = cancel.unless_cancelled(stdin.lock()).await?;
                // Echo off before the prompt shows: from then on a consent
                // prompt waits for this read (`Consent::ask`).
                let _echo_off = crate::terminal::EchoOff::stdin().map_err(|error| {
                    OpError::new(
                        ErrorCode::Io,
                        format!("cannot turn off echo on the terminal: {error}"),
                    )
                })?;
                show(prompt).await;
                // With echo off the terminal still echoes the Enter that
                // ends the line (ECHONL), but nothing for an end of input
                // (Ctrl-D): the next output would go on the prompt's line.
                let mut newline_typed = false;
                let read = match cancel.unless_cancelled(until_input(&mut *stdin)).await?? {
                    true => read_line_noting_end(&mut *stdin, &mut newline_typed).await,
                    false => Ok(Reply::Line { line: None }),
                };
                if !newline_typed {
                    show(Some("\n".into())).await;
                }
                read
            }
            .await
        }
        Operation::TerminalMode {
            mode: mode @ (TerminalMode::Raw | TerminalMode::Cooked),
        } if stdin_is_terminal => crate::terminal::set_raw(mode == TerminalMode::Raw)
            .map(|()| Reply::Unit)
            .map_err(|error| {
                OpError::new(
                    ErrorCode::Io,
                    format!("cannot switch the terminal: {error}"),
                )
            }),
        Operation::TerminalMode { .. } if stdin_is_terminal => Err(OpError::new(
            ErrorCode::Unsupported,
            "this client does not know that terminal mode",
        )),
        Operation::ReadKey if stdin_is_terminal => {
            // Keys come from the terminal; hold stdin so no line read competes.
            let failed = |error: io::Error| {
                OpError::new(ErrorCode::Io, format!("cannot read a key: {error}"))
            };
            async {
                let mut stdin = cancel.unless_cancelled(stdin.lock()).await?;
                // What an earlier byte read took from the terminal and did
                // not use goes back in front of the keys typed after it.
                let left = stdin.buffer().to_vec();
                crate::keys::pump().unread(&left);
                std::pin::Pin::new(&mut *stdin).consume(left.len());
                // Raw for this read, if the app has not asked for it.
                let _raw = crate::terminal::RawForKeys::begin().map_err(failed)?;
                // A key is taken only when it is returned: cancelled before,
                // it stays for the next read.
                let key = cancel
                    .unless_cancelled(crate::keys::pump().next_key())
                    .await?;
                key.map(Reply::Key).map_err(failed)
            }
            .await
        }
        Operation::TerminalMode { .. } | Operation::ReadKey => Err(OpError::new(
            ErrorCode::Unsupported,
            "stdin is not a terminal",
        )),
        Operation::StdinRead { max } => {
            async {
                let mut stdin = cancel.unless_cancelled(stdin.lock()).await?;
                if max > 0 && !cancel.unless_cancelled(until_input(&mut *stdin)).await?? {
                    return Ok(Reply::Data {
                        bytes: Vec::new().into(),
                        eof: true,
                    });
                }
                read_chunk(&mut *stdin, max as usize).await
            }
            .await
        }
        op => match resources.perform(op).await {
            Some(result) => result,
            None => Err(OpError::new(
                ErrorCode::Unsupported,
                "this client does not support that operation",
            )),
        },
    };
    match result {
        Ok(reply) => Response::ok(request.id, reply),
        Err(error) => Response::error(request.id, error),
    }
}

/// The server's `cancel` of one request, as the task performing it sees it.
#[derive(Debug)]
pub(crate) enum CancelWatch {
    /// The request may still be cancelled: a message comes here if it is.
    Open(tokio::sync::oneshot::Receiver<()>),
    /// The server cancelled it.
    Cancelled,
    /// It cannot be cancelled (any more).
    Never,
}

impl CancelWatch {
    /// The error a request cancelled by the server ends with.
    fn error() -> OpError {
        OpError::new(
            ErrorCode::Cancelled,
            "the server gave up waiting for this read before it took any input",
        )
    }

    /// Resolves once the server has cancelled the request; never if it cannot.
    async fn cancelled(&mut self) {
        if let CancelWatch::Open(told) = self {
            *self = match told.await {
                Ok(()) => CancelWatch::Cancelled,
                // Its sender went with the session: no cancel can come.
                Err(_) => CancelWatch::Never,
            };
        }
        match self {
            CancelWatch::Cancelled => {}
            CancelWatch::Open(_) | CancelWatch::Never => std::future::pending().await,
        }
    }

    /// Runs `step` (one that takes nothing from the user unless it
    /// finishes) unless the server cancels the request first; a cancel
    /// already received wins over a step that could finish too.
    async fn unless_cancelled<T>(&mut self, step: impl Future<Output = T>) -> Result<T, OpError> {
        tokio::select! {
            biased;
            () = self.cancelled() => Err(Self::error()),
            done = step => Ok(done),
        }
    }
}

/// Resolves once stdin has input (or its end) in the buffer, taking none of
/// it: a read cancelled while waiting here has taken nothing. `false` at
/// the end of input, which the read answers itself: a terminal says it
/// once (Ctrl-D), and a second look would wait for another.
async fn until_input(stdin: &mut (impl AsyncBufRead + Unpin)) -> Result<bool, OpError> {
    stdin
        .fill_buf()
        .await
        .map(|available| !available.is_empty())
        .map_err(|error| OpError::new(ErrorCode::Io, format!("reading stdin: {error}")))
}

/// Whether the server may cancel `op` on this client: reads of the user's
/// input, until they take some (see `CancelWatch`).
fn cancellable(op: &Operation) -> bool {
    reads_stdin(op) || matches!(op, Operation::ReadKey)
}

/// Whether `op` reads the client's stdin (its turn is kept, see
/// `stdin_turn` in [`run_session`]).
fn reads_stdin(op: &Operation) -> bool {
    matches!(
        op,
        Operation::StdinRead { .. }
            | Operation::StdinReadLine { .. }
            | Operation::StdinReadPassword { .. }
    )
}

/// Why `prompt` is not shown: it is longer than [`MAX_PROMPT`].
fn oversized(prompt: Option<&str>) -> Option<OpError> {
    let len = prompt.map_or(0, str::len);
    (len > MAX_PROMPT).then(|| {
        OpError::new(
            ErrorCode::Invalid,
            format!(
                "the prompt is {len} bytes; this client shows prompts of up to {MAX_PROMPT} bytes"
            ),
        )
    })
}

/// Up to `max` bytes of what stdin has (at least one byte unless at end).
async fn read_chunk(stdin: &mut (impl AsyncBufRead + Unpin), max: usize) -> Result<Reply, OpError> {
    // An empty answer means the end of input: a read of nothing cannot say.
    if max == 0 {
        return Err(OpError::new(
            ErrorCode::Invalid,
            "a stdin read must ask for at least one byte",
        ));
    }
    let available = stdin
        .fill_buf()
        .await
        .map_err(|error| OpError::new(ErrorCode::Io, format!("reading stdin: {error}")))?;
    let len = available.len().min(max.min(MAX_STDIN_CHUNK));
    let bytes = available[..len].to_vec();
    stdin.consume(len);
    Ok(Reply::Data {
        eof: bytes.is_empty(),
        bytes: bytes.into(),
    })
}

async fn read_line(stdin: &mut (impl AsyncBufRead + Unpin)) -> Result<Reply, OpError> {
    read_line_noting_end(stdin, &mut false).await
}

/// [`read_line`], setting `newline_typed` when a newline ended the line.
async fn read_line_noting_end(
    stdin: &mut (impl AsyncBufRead + Unpin),
    newline_typed: &mut bool,
) -> Result<Reply, OpError> {
    let mut bytes = Vec::new();
    // Reads through the session's one buffer: bytes after the newline stay
    // there for the next read instead of being lost with a local buffer.
    // The longest line and its `\r\n`: one more byte is a line too long.
    let mut limited = (&mut *stdin).take(MAX_LINE as u64 + 2);
    let io_error =
        |error: io::Error| OpError::new(ErrorCode::Io, format!("reading stdin: {error}"));
    let n = limited
        .read_until(b'\n', &mut bytes)
        .await
        .map_err(io_error)?;
    if n == 0 {
        return Ok(Reply::Line { line: None });
    }
    let ended = bytes.last() == Some(&b'\n');
    *newline_typed = ended;
    if ended {
        bytes.pop();
        if bytes.last() == Some(&b'\r') {
            bytes.pop();
        }
    }
    if bytes.len() > MAX_LINE {
        // The rest of the refused line goes too: the next read would
        // otherwise take it for a line of its own.
        if !ended {
            skip_line(stdin).await.map_err(io_error)?;
        }
        return Err(OpError::new(
            ErrorCode::Invalid,
            format!("input line longer than {MAX_LINE} bytes (skipped)"),
        ));
    }
    let line = String::from_utf8(bytes)
        .map_err(|_| OpError::new(ErrorCode::Invalid, "input line is not valid UTF-8"))?;
    Ok(Reply::Line { line: Some(line) })
}

/// Reads up to and including the next newline (or to the end), keeping
/// nothing: memory stays bounded however long the line.
async fn skip_line(stdin: &mut (impl AsyncBufRead + Unpin)) -> io::Result<()> {
    loop {
        let available = stdin.fill_buf().await?;
        if available.is_empty() {
            return Ok(());
        }
        match available.iter().position(|&byte| byte == b'\n') {
            Some(at) => {
                stdin.consume(at + 1);
                return Ok(());
            }
            None => {
                let len = available.len();
                stdin.consume(len);
            }
        }
    }
}

/// An escape the user typed in raw mode.
enum Escape {
    /// Ctrl-\ in a resumable session.
    Detach,
    /// `~.`
    Disconnect,
}

/// The escapes typed from now on, polled only after one woke the loop
/// ([`WokenOnly`]), as the signals are: waiting on the key pump's two
/// `Notify`s afresh on every turn of the loop took about 2 % of the client's
/// time per request.
fn typed_escapes(
    keys: &'static crate::keys::KeyPump,
) -> WokenOnly<Pin<Box<dyn Stream<Item = Escape> + Send>>> {
    let detach = futures_util::stream::unfold((), move |()| async move {
        keys.detach_typed().await;
        Some((Escape::Detach, ()))
    });
    let disconnect = futures_util::stream::unfold((), move |()| async move {
        keys.disconnect_typed().await;
        Some((Escape::Disconnect, ()))
    });
    WokenOnly::new(Box::pin(futures_util::stream::select(detach, disconnect)))
}

/// A signal the client itself received.
enum LocalSignal {
    Interrupt,
    Resize,
    /// Ctrl-\ (SIGQUIT): detach from the session.
    Detach,
    Terminate(i32),
    /// SIGCONT: the client was stopped and goes on.
    Continued,
}

/// The process signals the client watches.
struct Signals {
    interrupt: tokio::signal::unix::Signal,
    terminate: tokio::signal::unix::Signal,
    hangup: tokio::signal::unix::Signal,
    resize: tokio::signal::unix::Signal,
    quit: tokio::signal::unix::Signal,
    /// SIGCONT: watching it leaves the default (to go on) as it is.
    cont: tokio::signal::unix::Signal,
}

impl Signals {
    fn new() -> io::Result<Signals> {
        use tokio::signal::unix::{SignalKind as Kind, signal};
        Ok(Signals {
            interrupt: signal(Kind::interrupt())?,
            terminate: signal(Kind::terminate())?,
            hangup: signal(Kind::hangup())?,
            resize: signal(Kind::window_change())?,
            quit: signal(Kind::quit())?,
            cont: signal(Kind::from_raw(signal_hook::consts::SIGCONT))?,
        })
    }
}

async fn next_signal(signals: &mut Option<WokenOnly<Signals>>) -> LocalSignal {
    // `Signals` never ends; none watched, nothing comes.
    if let Some(signals) = signals
        && let Some(signal) = signals.next().await
    {
        return signal;
    }
    std::future::pending().await
}

/// A signal that arrived: the first pending one in a fixed order, those
/// that end or detach the client first and the window's size last (a
/// window being dragged sends many, and must not hold the others back).
/// Polled through [`WokenOnly`]: the session loop turns many times a
/// request while it lingers, and polling six signal streams each turn took
/// a few percent of the client's time per request.
impl Stream for Signals {
    type Item = LocalSignal;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<LocalSignal>> {
        let this = self.get_mut();
        let watched = [
            (&mut this.terminate, LocalSignal::Terminate(15)),
            (&mut this.hangup, LocalSignal::Terminate(1)),
            (&mut this.interrupt, LocalSignal::Interrupt),
            (&mut this.quit, LocalSignal::Detach),
            (&mut this.cont, LocalSignal::Continued),
            (&mut this.resize, LocalSignal::Resize),
        ];
        for (signal, local) in watched {
            // tokio gives no `None` here (its signal driver lives as long
            // as the runtime); ignored, should it ever.
            if let Poll::Ready(Some(())) = signal.poll_recv(cx) {
                return Poll::Ready(Some(local));
            }
        }
        Poll::Pending
    }
}

async fn send<S>(sink: &mut Sink<S>, frame: &ClientFrame) -> Result<(), ClientError>
where
    S: Socket,
{
    send_message(sink, Message::Binary(codec::encode(frame).into())).await
}

/// Sends encoded frames with one flush.
async fn send_encoded<S>(sink: &mut Sink<S>, frames: Vec<Bytes>) -> Result<(), ClientError>
where
    S: Socket,
{
    if frames.is_empty() {
        return Ok(());
    }
    let sending = async {
        for bytes in frames {
            sink.feed(Message::Binary(bytes)).await?;
        }
        sink.flush().await
    };
    unless_told_to_exit(async {
        match tokio::time::timeout(SEND_TIMEOUT, sending).await {
            Ok(result) => result.map_err(lost),
            Err(_) => Err(ClientError::ConnectionLost(format!(
                "the server took no data for {SEND_TIMEOUT:?}"
            ))),
        }
    })
    .await
}

/// Sends one message; a server that stops reading cannot hold the client
/// forever.
async fn send_message<S>(sink: &mut Sink<S>, message: Message) -> Result<(), ClientError>
where
    S: Socket,
{
    unless_told_to_exit(async {
        match tokio::time::timeout(SEND_TIMEOUT, sink.send(message)).await {
            Ok(result) => result.map_err(lost),
            Err(_) => Err(ClientError::ConnectionLost(format!(
                "the server took no data for {SEND_TIMEOUT:?}"
            ))),
        }
    })
    .await
}

/// The next frame from the server, skipping pings and pongs.
async fn next_frame<S>(source: &mut Source<S>) -> Result<ServerFrame, ClientError>
where
    S: Socket,
{
    loop {
        if let Some((incoming, _)) = next_message(source).await? {
            return Ok(incoming.into_frame());
        }
    }
}

/// [`next_message`] on the current connection; never, while there is none.
async fn next_message_on<S>(
    link: &mut Option<Link<S>>,
) -> Result<Option<(Incoming, usize)>, ClientError>
where
    S: Socket,
{
    match link {
        Some(current) => next_message(&mut current.source).await,
        None => std::future::pending().await,
    }
}

/// Longest a session that cannot resume reads on after a failed send,
/// looking for the server's last words. They are in the socket's buffer
/// already when they came: this bounds only a server that is still there.
const LAST_WORDS_WAIT: Duration = Duration::from_millis(250);

/// After a send failed on a session that cannot resume: the server's exit
/// or error when it is among the messages already received (a server that
/// sent its exit and closed while this client still sent an answer: the
/// close broke the send). Output before it is written as usual; requests
/// are not answered (nothing can be sent). `None` when the messages end,
/// fail or do not come within [`LAST_WORDS_WAIT`] without either.
async fn last_words<S>(
    waiting: &mut Option<Result<Option<(Incoming, usize)>, ClientError>>,
    link: &mut Option<Link<S>>,
    pipes: &mut [OutputPipe; 2],
    max_chunk: usize,
) -> Option<Result<Finish, ClientError>>
where
    S: Socket,
{
    link.as_ref()?;
    let reading = async {
        loop {
            let incoming = match next_or_waiting(waiting, link).await {
                Ok(Some((incoming, _))) => incoming,
                Ok(None) => continue,
                Err(_) => return None,
            };
            match incoming {
                Incoming::Chunk(sid, bytes) => {
                    if take_chunk(pipes, sid, bytes, max_chunk).is_err() {
                        return None;
                    }
                }
                Incoming::Frame(ServerFrame::Exit(exit)) => {
                    return Some(Ok(Finish::Exit(exit.status)));
                }
                Incoming::Frame(ServerFrame::Error(error)) => {
                    return Some(Err(server_error(error)));
                }
                Incoming::Frame(_) => {}
            }
        }
    };
    tokio::time::timeout(LAST_WORDS_WAIT, reading)
        .await
        .ok()
        .flatten()
}

/// The message found `waiting` by an earlier turn, or else the next one.
/// Cancel-safe: the waiting message is taken only when the future is first
/// polled, which then returns it at once.
async fn next_or_waiting<S>(
    waiting: &mut Option<Result<Option<(Incoming, usize)>, ClientError>>,
    link: &mut Option<Link<S>>,
) -> Result<Option<(Incoming, usize)>, ClientError>
where
    S: Socket,
{
    match waiting.take() {
        Some(message) => message,
        None => next_message_on(link).await,
    }
}

/// A frame from the server, with a `data` frame's bytes kept in the
/// message they arrived in.
enum Incoming {
    /// A chunk of output for a stream.
    Chunk(StreamId, Bytes),
    /// Any other frame (never [`ServerFrame::Data`]).
    Frame(ServerFrame),
}

impl Incoming {
    fn is_sequenced(&self) -> bool {
        match self {
            Incoming::Chunk(..) => true,
            Incoming::Frame(frame) => frame.is_sequenced(),
        }
    }

    fn into_frame(self) -> ServerFrame {
        match self {
            Incoming::Chunk(sid, bytes) => ServerFrame::Data(Data {
                sid,
                bytes: ByteBuf::from(Vec::from(bytes)),
            }),
            Incoming::Frame(frame) => frame,
        }
    }
}

/// Writes or queues a chunk of output for its stream, within the stream's
/// window: the stream's index and what became of the chunk; the
/// violation's description otherwise.
fn take_chunk(
    pipes: &mut [OutputPipe; 2],
    sid: StreamId,
    bytes: Bytes,
    max_chunk: usize,
) -> Result<(usize, Pushed), String> {
    let (index, pipe) = pipes
        .iter_mut()
        .enumerate()
        .find(|(_, pipe)| pipe.sid == sid)
        .ok_or_else(|| format!("data on stream {} which is not open", sid.0))?;
    let len = bytes.len();
    if len > max_chunk {
        return Err(format!(
            "data chunk of {len} bytes exceeds the agreed maximum of {max_chunk}"
        ));
    }
    pipe.window
        .on_receive(len)
        .map_err(|error| format!("on {}: {error}", pipe.name))?;
    if len == 0 {
        return Ok((index, Pushed::Queued));
    }
    Ok((index, pipe.push(Chunk::Remote(bytes))))
}

/// The server's next frame, or `None` for a ping or pong: a sign of life that
/// keeps the idle time-out from firing while a command prints nothing.
async fn next_message<S>(source: &mut Source<S>) -> Result<Option<(Incoming, usize)>, ClientError>
where
    S: Socket,
{
    let message = match source.next().await {
        None => {
            return Err(ClientError::ConnectionLost(
                "the server closed the connection".into(),
            ));
        }
        Some(Err(error)) => return Err(classify(error)),
        Some(Ok(message)) => message,
    };
    match message {
        Message::Binary(bytes) => {
            let len = bytes.len();
            // Output takes the fast path: its bytes stay where they arrived.
            // A small chunk is copied instead, so that it does not keep its
            // message's buffer alive while it waits in the output queue.
            if let Some((sid, range)) = codec::data_chunk(&bytes) {
                let chunk = if range.len() < SMALL_CHUNK {
                    Bytes::copy_from_slice(&bytes[range])
                } else {
                    bytes.slice(range)
                };
                return Ok(Some((Incoming::Chunk(sid, chunk), len)));
            }
            match codec::decode::<ServerFrame>(&bytes) {
                Ok(ServerFrame::Data(data)) => Ok(Some((
                    Incoming::Chunk(data.sid, Bytes::from(data.bytes.into_vec())),
                    len,
                ))),
                Ok(frame) => Ok(Some((Incoming::Frame(frame), len))),
                Err(error) => Err(ClientError::Protocol(format!(
                    "the server sent an invalid frame: {error}"
                ))),
            }
        }
        Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => Ok(None),
        Message::Text(_) => Err(ClientError::Protocol(
            "the server sent a text message instead of a frame".into(),
        )),
        Message::Close(_) => Err(ClientError::ConnectionLost(
            "the server closed the connection before the command finished".into(),
        )),
    }
}

fn classify(error: tungstenite::Error) -> ClientError {
    use tungstenite::Error;
    match error {
        Error::Capacity(error) => ClientError::Protocol(format!(
            "the server sent a frame over the {MAX_FRAME_LEN}-byte limit ({error})"
        )),
        // A peer that vanishes without a close frame is a lost connection,
        // not a broken server.
        Error::Protocol(tungstenite::error::ProtocolError::ResetWithoutClosingHandshake) => {
            lost(error)
        }
        Error::Protocol(error) => {
            ClientError::Protocol(format!("bad WebSocket data from the server: {error}"))
        }
        Error::Utf8(_) => {
            ClientError::Protocol("the server sent invalid UTF-8 in a text message".into())
        }
        Error::Io(error)
            if error
                .get_ref()
                .is_some_and(|inner| inner.is::<crate::secure::Unsealed>()) =>
        {
            ClientError::Protocol(error.to_string())
        }
        other => lost(other),
    }
}

fn lost(error: tungstenite::Error) -> ClientError {
    ClientError::ConnectionLost(format!("the connection to the server was lost: {error}"))
}

fn server_error(error: SessionError) -> ClientError {
    // Shown as the client's own message: the server's text is quoted inert,
    // its message and a code this client does not know (kept as sent, it
    // could add a line of the client's own below the error).
    let message = crate::inert::inert(&error.message).into_owned();
    match error.code {
        ErrorCode::Shutdown => ClientError::ServerShutdown(message),
        ErrorCode::Other(code) => ClientError::ServerError {
            code: ErrorCode::Other(crate::inert::inert(&code).into_owned()),
            message,
        },
        code => ClientError::ServerError { code, message },
    }
}

/// [`violation`] on the current connection, if there is one.
async fn violation_on<S>(link: &mut Option<Link<S>>, message: String) -> ClientError
where
    S: Socket,
{
    match link {
        Some(current) => violation(&mut current.sink, message).await,
        None => ClientError::Protocol(message),
    }
}

/// Tells the server why the client gives up, then returns the error.
async fn violation<S>(sink: &mut Sink<S>, message: String) -> ClientError
where
    S: Socket,
{
    let frame = ClientFrame::Error(SessionError {
        code: ErrorCode::Protocol,
        message: message.clone(),
    });
    let _ = tokio::time::timeout(Duration::from_secs(1), send(sink, &frame)).await;
    ClientError::Protocol(message)
}

fn frame_name(frame: &ServerFrame) -> String {
    match frame {
        ServerFrame::Welcome(_) => "welcome".into(),
        ServerFrame::Incompatible(_) => "incompatible".into(),
        ServerFrame::Data(_) => "data".into(),
        ServerFrame::Window(_) => "window".into(),
        ServerFrame::Request(_) => "request".into(),
        ServerFrame::Exit(_) => "exit".into(),
        ServerFrame::Error(_) => "error".into(),
        ServerFrame::Ack(_) => "ack".into(),
        ServerFrame::Resumed(_) => "resumed".into(),
        ServerFrame::Detached(_) => "detached".into(),
        ServerFrame::Unknown { tag } => format!("unknown `{}`", crate::inert::inert(tag)),
        _ => "unsupported".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use terminalwire_protocol::RequestId;

    /// `~.` typed while the session's loop is held up (a send to a server
    /// that reads nothing) tells the session to end, as a signal does: the
    /// loop cannot hear the key pump then.
    #[tokio::test]
    async fn a_tilde_dot_tells_a_held_up_session_to_end() {
        let (told, mut exit_now) = tokio::sync::watch::channel(None);
        let (typed, disconnects) = tokio::sync::watch::channel(0u64);
        let watcher = tokio::spawn(watch_disconnects(Arc::new(told), disconnects));
        typed.send_replace(1);
        let exit =
            tokio::time::timeout(Duration::from_secs(10), exit_now.wait_for(Option::is_some))
                .await
                .expect("not told within 10 s")
                .map(|exit| *exit)
                .unwrap();
        assert!(matches!(exit, Some(ExitNow::Disconnected)), "{exit:?}");
        watcher.await.unwrap();
    }

    #[tokio::test]
    async fn a_stdin_read_of_nothing_is_refused_not_taken_for_the_end() {
        let mut stdin = BufReader::new(&b"abc"[..]);
        let refused = read_chunk(&mut stdin, 0).await.unwrap_err();
        assert_eq!(refused.code, ErrorCode::Invalid);
        let read = read_chunk(&mut stdin, 2).await.unwrap();
        assert!(
            matches!(&read, Reply::Data { bytes, eof: false } if bytes.as_slice() == b"ab"),
            "{read:?}"
        );
    }

    #[test]
    fn an_answer_over_the_frame_limit_leaves_as_an_error_that_fits() {
        let line = "x".repeat(MAX_FRAME_LEN + 1);
        let big = Response::ok(RequestId(7), Reply::Line { line: Some(line) });
        let small = Response::ok(RequestId(8), Reply::Bool { value: true });
        let mut running = HashSet::from([7, 8]);
        let mut recent = RecentRequests::new();
        recent.begin(7);
        recent.begin(8);
        let mut replay = ReplayBuffer::new();
        let sent = answer(
            vec![big, small],
            &mut running,
            &mut recent,
            Some(&mut replay),
        );
        assert_eq!(sent.len(), 2);
        assert!(sent.iter().all(|(bytes, _)| bytes.len() <= MAX_FRAME_LEN));
        let Ok(ClientFrame::Response(refused)) = codec::decode(&sent[0].0) else {
            panic!("not a response");
        };
        assert_eq!(refused.id, RequestId(7));
        assert_eq!(
            refused.error.map(|error| error.code),
            Some(ErrorCode::TooLarge)
        );
        let Ok(ClientFrame::Response(kept)) = codec::decode(&sent[1].0) else {
            panic!("not a response");
        };
        assert_eq!(kept.ok, Some(Reply::Bool { value: true }));
        // What a resume would send again is the error, not the answer.
        assert!(matches!(recent.begin(7), Seen::Answered(bytes) if bytes == sent[0].0));
        assert!(running.is_empty());
    }

    /// A socket of plain (unsealed) messages: what the client sends goes
    /// to `sent`, what it reads comes from `incoming`; a send of a `window`
    /// frame fails when `fail_window` is set (the connection breaks just
    /// then).
    struct MockSocket {
        incoming: mpsc::UnboundedReceiver<Message>,
        sent: mpsc::UnboundedSender<Message>,
        fail_window: bool,
    }

    impl futures_util::Stream for MockSocket {
        type Item = Result<Message, tungstenite::Error>;
        fn poll_next(
            mut self: Pin<&mut Self>,
            cx: &mut std::task::Context<'_>,
        ) -> Poll<Option<Self::Item>> {
            self.incoming.poll_recv(cx).map(|message| message.map(Ok))
        }
    }

    impl futures_util::Sink<Message> for MockSocket {
        type Error = tungstenite::Error;
        fn poll_ready(
            self: Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
        ) -> Poll<Result<(), Self::Error>> {
            Poll::Ready(Ok(()))
        }
        fn start_send(self: Pin<&mut Self>, message: Message) -> Result<(), Self::Error> {
            if self.fail_window
                && let Message::Binary(bytes) = &message
                && let Ok(ClientFrame::Window(_)) = codec::decode(bytes)
            {
                return Err(tungstenite::Error::Io(
                    io::ErrorKind::ConnectionReset.into(),
                ));
            }
            let _ = self.sent.send(message);
            Ok(())
        }
        fn poll_flush(
            self: Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
        ) -> Poll<Result<(), Self::Error>> {
            Poll::Ready(Ok(()))
        }
        fn poll_close(
            self: Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
        ) -> Poll<Result<(), Self::Error>> {
            Poll::Ready(Ok(()))
        }
    }

    fn server_message(frame: &ServerFrame) -> Message {
        Message::Binary(codec::encode(frame).into())
    }

    fn client_frame(message: &Message) -> Option<ClientFrame> {
        match message {
            Message::Binary(bytes) => codec::decode(bytes).ok(),
            _ => None,
        }
    }

    /// Chunk `n` of the server's output: 64 KiB of the byte `n`.
    fn output_chunk(n: u8) -> ServerFrame {
        ServerFrame::Data(terminalwire_protocol::frame::Data {
            sid: StreamId::STDOUT,
            bytes: ByteBuf::from(vec![n; 64 << 10]),
        })
    }

    /// Output into a file is written at once, then the window grant it made
    /// due is sent. When that send finds the connection broken, the chunk
    /// is in the file all the same: it must count as received, or the
    /// server sends it again after the resume and it is written twice (the
    /// chaos test saw stdout files longer than the output).
    #[tokio::test]
    async fn a_chunk_written_before_its_grant_failed_to_leave_is_not_written_again() {
        const CHUNKS: u8 = 14;
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("out");
        let io = LocalIo {
            stdout: Output::File(std::fs::File::create(&out).unwrap()),
            stderr: Output::Async(Box::new(tokio::io::sink())),
            stdin: Box::new(tokio::io::empty()),
        };
        // The first connection: the welcome, then every chunk; the grant
        // due after the twelfth (the file's window is 512 KiB, the first
        // 512 KiB consumed are not granted again, then half a window) fails.
        let (first_in, incoming) = mpsc::unbounded_channel();
        let (sent, _first_out) = mpsc::unbounded_channel();
        let first = MockSocket {
            incoming,
            sent,
            fail_window: true,
        };
        let welcome = terminalwire_protocol::frame::Welcome {
            version: 1,
            server: terminalwire_protocol::frame::Software {
                name: "mock".into(),
                version: "0".into(),
            },
            session_id: "mock".into(),
            capabilities: vec![resume::CAPABILITY.into()],
            window: terminalwire_protocol::DEFAULT_WINDOW,
            max_chunk: terminalwire_protocol::DEFAULT_MAX_CHUNK,
            resume: Some(terminalwire_protocol::frame::ResumeTicket {
                token: ByteBuf::from(vec![1; 32]),
                grace_secs: 30,
                detach_secs: 0,
            }),
        };
        first_in
            .send(server_message(&ServerFrame::Welcome(welcome)))
            .unwrap();
        for n in 1..=CHUNKS {
            first_in.send(server_message(&output_chunk(n))).unwrap();
        }
        // The second connection: the server answers the resume and sends
        // again what the client says it did not receive, then the exit.
        let (second_in, incoming) = mpsc::unbounded_channel();
        let (sent, mut second_out) = mpsc::unbounded_channel();
        let second = Arc::new(std::sync::Mutex::new(Some(MockSocket {
            incoming,
            sent,
            fail_window: false,
        })));
        let reconnect: Reconnect<MockSocket> = Arc::new(move || {
            let socket = second.lock().unwrap().take();
            Box::pin(async move {
                socket.ok_or_else(|| ClientError::ConnectionLost("no third connection".into()))
            })
        });
        let server = tokio::spawn(async move {
            let received = loop {
                let message = second_out.recv().await.expect("no resume came");
                if let Some(ClientFrame::Resume(resume)) = client_frame(&message) {
                    break resume.received;
                }
            };
            let resumed = ServerFrame::Resumed(Resumed {
                received: 0,
                token: ByteBuf::from(vec![2; 32]),
            });
            second_in.send(server_message(&resumed)).unwrap();
            for n in received + 1..=u64::from(CHUNKS) {
                second_in
                    .send(server_message(&output_chunk(n as u8)))
                    .unwrap();
            }
            let exit = ServerFrame::Exit(terminalwire_protocol::frame::Exit { status: 0 });
            second_in.send(server_message(&exit)).unwrap();
            // Kept open until the client is done.
            while second_out.recv().await.is_some() {}
            drop(second_in);
            received
        });
        let target = crate::connect::Target::parse("ws://127.0.0.1:1/terminal").unwrap();
        let hello = crate::facts::hello(&target, "mock".into(), Vec::new()).unwrap();
        let resumption = Resumption {
            reconnect,
            url: "ws://127.0.0.1:1/terminal".into(),
            authority: "127.0.0.1:1".into(),
            command: Vec::new(),
            show_status: false,
            on_attached: None,
        };
        let config = SessionConfig::default();
        let ended = tokio::time::timeout(
            Duration::from_secs(20),
            run_with(
                first,
                Start::Hello(Box::new(hello)),
                io,
                &config,
                Some(resumption),
            ),
        )
        .await
        .expect("the session hung")
        .unwrap();
        assert!(matches!(ended, Ended::Exit(0)), "{ended:?}");
        // The grant did fail, after the twelfth chunk: the client resumed.
        let received = server.await.unwrap();
        assert!(received >= 11, "the connection failed at chunk {received}");
        let written = std::fs::read(&out).unwrap();
        let expected: Vec<u8> = (1..=CHUNKS)
            .flat_map(|n| std::iter::repeat_n(n, 64 << 10))
            .collect();
        assert_eq!(
            written.len(),
            expected.len(),
            "output lost or written twice"
        );
        assert!(written == expected, "the output differs");
    }

    /// The file writer's loop with no prompt, never stopped.
    fn write_ungated(
        index: usize,
        file: std::fs::File,
        chunks: mpsc::UnboundedReceiver<Chunk>,
        events: &mpsc::UnboundedSender<Event>,
    ) {
        let stop = std::sync::atomic::AtomicBool::new(false);
        let queued = std::sync::atomic::AtomicUsize::new(0);
        write_file(index, file, chunks, events, None, &stop, &queued);
    }

    fn remote(bytes: &[u8]) -> Chunk {
        Chunk::Remote(Bytes::copy_from_slice(bytes))
    }

    /// An output pipe on `output` with a 1 MiB window, sized for a link
    /// with round trip `rtt`.
    fn pipe_on(
        output: Output,
        gate: Option<Arc<tokio::sync::RwLock<()>>>,
        rtt: Duration,
    ) -> (OutputPipe, mpsc::UnboundedReceiver<Event>) {
        let (events_tx, events) = mpsc::unbounded_channel();
        let mut pipe = OutputPipe::spawn(
            0,
            StreamId::STDOUT,
            "stdout",
            output,
            1 << 20,
            events_tx,
            gate,
        );
        pipe.size_window(1 << 20, rtt);
        (pipe, events)
    }

    const NEAR: Duration = Duration::from_micros(50);

    #[test]
    fn only_regular_files_and_the_null_device_never_wait() {
        let dir = tempfile::tempdir().unwrap();
        let file = std::fs::File::create(dir.path().join("out")).unwrap();
        assert!(never_waits(&file));
        let null = std::fs::OpenOptions::new()
            .write(true)
            .open("/dev/null")
            .unwrap();
        assert!(never_waits(&null));
        let (_reader, writer) = std::io::pipe().unwrap();
        let pipe = std::fs::File::from(std::os::fd::OwnedFd::from(writer));
        assert!(!never_waits(&pipe));
        let zero = std::fs::OpenOptions::new()
            .write(true)
            .open("/dev/zero")
            .unwrap();
        assert!(!never_waits(&zero), "only the null device among devices");
    }

    #[tokio::test]
    async fn a_file_is_written_at_once_and_in_order_behind_queued_text() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out");
        let file = std::fs::File::create(&path).unwrap();
        let gate = Arc::new(tokio::sync::RwLock::new(()));
        let (pipe, mut events) = pipe_on(Output::File(file), Some(gate.clone()), NEAR);
        assert_eq!(pipe.window.window(), DIRECT_OUTPUT_WINDOW);

        // A prompt on screen holds the writer thread, not a file.
        let prompt = gate.clone().write_owned().await;
        assert!(matches!(pipe.push(remote(b"one ")), Pushed::Written(4)));
        // The client's own text goes to the thread (held by the prompt);
        // the server's chunks after it wait behind it.
        assert!(matches!(
            pipe.push(Chunk::Local(b"(note) ".to_vec())),
            Pushed::Queued
        ));
        assert!(matches!(pipe.push(remote(b"two ")), Pushed::Queued));
        assert!(matches!(pipe.push(remote(b"three ")), Pushed::Queued));
        drop(prompt);
        // The writer reports the queued chunks written; then the session
        // writes at once again.
        let mut consumed = 0;
        while consumed < 10 {
            match events.recv().await.unwrap() {
                Event::Consumed { len, .. } => consumed += len,
                Event::Failed { error, .. } => panic!("{error}"),
            }
        }
        assert_eq!(consumed, 10, "the client's own text is not counted");
        assert!(matches!(pipe.push(remote(b"four")), Pushed::Written(4)));
        assert_eq!(std::fs::read(&path).unwrap(), b"one (note) two three four");
    }

    /// A writer like tokio's stderr: a write returns at once and its bytes
    /// reach the screen only when flushed.
    struct WrittenLater {
        pending: Arc<std::sync::Mutex<Vec<u8>>>,
    }

    impl AsyncWrite for WrittenLater {
        fn poll_write(
            self: Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
            bytes: &[u8],
        ) -> Poll<io::Result<usize>> {
            self.pending.lock().unwrap().extend_from_slice(bytes);
            Poll::Ready(Ok(bytes.len()))
        }

        fn poll_flush(
            self: Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
        ) -> Poll<io::Result<()>> {
            self.pending.lock().unwrap().clear();
            Poll::Ready(Ok(()))
        }

        fn poll_shutdown(
            self: Pin<&mut Self>,
            cx: &mut std::task::Context<'_>,
        ) -> Poll<io::Result<()>> {
            self.poll_flush(cx)
        }
    }

    /// The consent prompt takes the screen only once what was written
    /// before it is on screen, even while more output is queued.
    #[tokio::test]
    async fn a_prompt_waits_for_output_a_writer_has_not_finished() {
        const CHUNKS: usize = 2000;
        let pending = Arc::new(std::sync::Mutex::new(Vec::new()));
        let writer = WrittenLater {
            pending: pending.clone(),
        };
        let gate = Arc::new(tokio::sync::RwLock::new(()));
        let (chunk_tx, chunks) = mpsc::unbounded_channel();
        for _ in 0..CHUNKS {
            chunk_tx.send(remote(b"output ")).unwrap();
        }
        let (events_tx, mut events) = mpsc::unbounded_channel();
        let writer = tokio::spawn(write_async(
            1,
            Box::new(writer),
            chunks,
            events_tx,
            Some(gate.clone()),
        ));
        let Some(Event::Consumed { .. }) = events.recv().await else {
            panic!("the writer failed");
        };
        let prompt = gate.write().await;
        assert_eq!(
            String::from_utf8_lossy(&pending.lock().unwrap()),
            "",
            "output still going out under the prompt"
        );
        let mut consumed = 1;
        while let Ok(Event::Consumed { .. }) = events.try_recv() {
            consumed += 1;
        }
        assert!(
            consumed < CHUNKS,
            "the prompt came after all the output: nothing was checked"
        );
        drop(prompt);
        drop(chunk_tx);
        writer.await.unwrap();
    }

    #[tokio::test]
    async fn after_a_slow_write_the_thread_writes_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out");
        let file = std::fs::File::create(&path).unwrap();
        let (mut pipe, mut events) = pipe_on(Output::File(file), None, NEAR);
        // Every write counts as slow.
        pipe.direct.as_mut().unwrap().slow_after = Duration::ZERO;
        assert!(matches!(pipe.push(remote(b"slow ")), Pushed::Written(5)));
        assert!(matches!(pipe.push(remote(b"then queued")), Pushed::Queued));
        match events.recv().await.unwrap() {
            Event::Consumed { len, .. } => assert_eq!(len, 11),
            Event::Failed { error, .. } => panic!("{error}"),
        }
        assert_eq!(std::fs::read(&path).unwrap(), b"slow then queued");
    }

    #[tokio::test]
    async fn only_an_output_written_at_once_grows_its_window_on_a_long_link() {
        let far = terminalwire_protocol::flow::MIN_GROWTH_RTT * 40;
        let dir = tempfile::tempdir().unwrap();
        let file = std::fs::File::create(dir.path().join("out")).unwrap();
        let (mut direct, _events) = pipe_on(Output::File(file), None, far);
        let (_reader, writer) = std::io::pipe().unwrap();
        let piped = std::fs::File::from(std::os::fd::OwnedFd::from(writer));
        let (mut queued, _events) = pipe_on(Output::File(piped), None, far);
        // The server sends the announced MiB, then twice more as granted.
        let start = std::time::Instant::now();
        let (mut direct_grants, mut queued_grants) = (0u64, 0u64);
        for step in 0..48u32 {
            let now = start + Duration::from_micros(u64::from(step) * 10);
            direct.window.on_receive(64 << 10).unwrap();
            queued.window.on_receive(64 << 10).unwrap();
            if let Some(grant) = direct.window.on_consumed_at(64 << 10, now) {
                direct_grants += u64::from(grant);
            }
            if let Some(grant) = queued.window.on_consumed_at(64 << 10, now) {
                queued_grants += u64::from(grant);
            }
        }
        assert!(
            direct.window.window() > 1 << 20,
            "{}",
            direct.window.window()
        );
        assert_eq!(queued.window.window(), 1 << 20);
        assert!(direct_grants > queued_grants);
    }

    #[tokio::test]
    async fn detaching_leaves_the_server_the_same_window_on_every_stream() {
        let dir = tempfile::tempdir().unwrap();
        let file = std::fs::File::create(dir.path().join("out")).unwrap();
        let (events_tx, mut events) = mpsc::unbounded_channel();
        let spawn = |index, sid, output| {
            let mut pipe =
                OutputPipe::spawn(index, sid, "out", output, 1 << 20, events_tx.clone(), None);
            pipe.size_window(1 << 20, NEAR);
            pipe
        };
        let (_reader, writer) = std::io::pipe().unwrap();
        let piped = std::fs::File::from(std::os::fd::OwnedFd::from(writer));
        let mut pipes = [
            spawn(0, StreamId::STDOUT, Output::File(file)),
            spawn(1, StreamId::STDERR, Output::File(piped)),
        ];
        // stdout (a file) shrank to 512 KiB; the server used all of the
        // first MiB, and the client wrote half of it (the half it keeps
        // rather than grants). stderr used nothing.
        for chunk in 0..16 {
            pipes[0].window.on_receive(64 << 10).unwrap();
            if chunk < 8 {
                assert!(pipes[0].consumed(64 << 10).is_none());
            }
        }
        let grants = drain_outputs(&mut pipes, &mut events, Duration::from_secs(5))
            .await
            .unwrap();
        // The server gets the whole MiB back on stdout, so that both
        // streams hold the window the next client starts from.
        let granted: Vec<(StreamId, u32)> = grants
            .iter()
            .map(|frame| match frame {
                ClientFrame::Window(grant) => (grant.sid, grant.bytes),
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(granted, [(StreamId::STDOUT, 1 << 20)]);
        assert_eq!(pipes[0].window.window(), 1 << 20);
        assert_eq!(pipes[1].window.window(), 1 << 20);
    }

    #[tokio::test]
    async fn a_pipe_keeps_its_writer_and_its_announced_window() {
        let (reader, writer) = std::io::pipe().unwrap();
        let file = std::fs::File::from(std::os::fd::OwnedFd::from(writer));
        let (mut pipe, mut events) = pipe_on(Output::File(file), None, NEAR);
        assert_eq!(pipe.window.window(), 1 << 20);
        assert!(matches!(pipe.push(remote(b"queued")), Pushed::Queued));
        match events.recv().await.unwrap() {
            Event::Consumed { len, .. } => assert_eq!(len, 6),
            Event::Failed { error, .. } => panic!("{error}"),
        }
        pipe.queue = None;
        (&mut pipe.task).await.unwrap();
        let mut out = Vec::new();
        std::io::Read::read_to_end(&mut &reader, &mut out).unwrap();
        assert_eq!(out, b"queued");
    }

    /// Runs a file writer on `chunks` into a pipe read `read_size` bytes at
    /// a time; returns what came out and the bytes reported consumed.
    fn through_a_pipe(chunks: Vec<Chunk>, read_size: usize) -> (Vec<u8>, usize, Vec<Event>) {
        use std::io::Read;
        let (mut reader, writer) = std::io::pipe().unwrap();
        let (queue, receiver) = mpsc::unbounded_channel();
        let (events_tx, mut events) = mpsc::unbounded_channel();
        for chunk in chunks {
            queue.send(chunk).unwrap_or_else(|_| unreachable!());
        }
        drop(queue);
        let writing = std::thread::spawn(move || {
            let file = std::fs::File::from(std::os::fd::OwnedFd::from(writer));
            write_ungated(0, file, receiver, &events_tx);
        });
        let mut out = Vec::new();
        let mut buffer = vec![0u8; read_size];
        loop {
            let n = reader.read(&mut buffer).unwrap();
            if n == 0 {
                break;
            }
            out.extend_from_slice(&buffer[..n]);
        }
        writing.join().unwrap();
        let mut consumed = 0;
        let mut other = Vec::new();
        while let Ok(event) = events.try_recv() {
            match event {
                Event::Consumed { len, .. } => consumed += len,
                failed => other.push(failed),
            }
        }
        (out, consumed, other)
    }

    #[test]
    fn the_file_writer_writes_every_chunk_in_order_through_partial_writes() {
        // More than a pipe holds, read in small pieces: writev returns short.
        let mut chunks = Vec::new();
        let mut expected = Vec::new();
        let mut remote = 0;
        for i in 0..300usize {
            let bytes: Vec<u8> = (0..(i * 37) % 9000).map(|j| (i + j) as u8).collect();
            expected.extend_from_slice(&bytes);
            if i % 7 == 0 {
                chunks.push(Chunk::Local(bytes));
            } else {
                remote += bytes.len();
                chunks.push(Chunk::Remote(Bytes::from(bytes)));
            }
        }
        assert!(expected.len() > 1 << 20);
        let (out, consumed, other) = through_a_pipe(chunks, 4096);
        assert!(other.is_empty());
        assert_eq!(out.len(), expected.len());
        assert!(out == expected, "bytes differ or are out of order");
        // Prompts the client wrote itself do not count against the window.
        assert_eq!(consumed, remote);
    }

    #[test]
    fn a_file_writer_whose_reader_is_gone_reports_the_failure() {
        let (reader, writer) = std::io::pipe().unwrap();
        drop(reader);
        let (queue, receiver) = mpsc::unbounded_channel();
        let (events_tx, mut events) = mpsc::unbounded_channel();
        queue
            .send(Chunk::Remote(Bytes::from_static(b"lost")))
            .unwrap_or_else(|_| unreachable!());
        drop(queue);
        let file = std::fs::File::from(std::os::fd::OwnedFd::from(writer));
        write_ungated(1, file, receiver, &events_tx);
        match events.try_recv() {
            Ok(Event::Failed { index: 1, error }) => {
                assert_eq!(error.kind(), io::ErrorKind::BrokenPipe);
            }
            _ => panic!("no failure reported"),
        }
    }

    /// Stdin as a session holds it.
    fn stdin_of(bytes: &'static [u8]) -> Mutex<BufReader<Box<dyn AsyncRead + Send + Unpin>>> {
        Mutex::new(BufReader::new(Box::new(bytes)))
    }

    fn read_line_request(prompt: String) -> Request {
        Request {
            id: terminalwire_protocol::RequestId(1),
            op: Operation::StdinReadLine {
                prompt: Some(prompt),
            },
        }
    }

    /// A mode of a later protocol is `unsupported` on a terminal too (the
    /// app may fall back), not an I/O failure of the terminal.
    #[tokio::test]
    async fn an_unknown_terminal_mode_is_unsupported_on_a_terminal() {
        let request = Request {
            id: terminalwire_protocol::RequestId(1),
            op: Operation::TerminalMode {
                mode: TerminalMode::Unknown,
            },
        };
        let response = perform(
            request,
            &stdin_of(b""),
            None,
            &Resources::none(),
            true,
            &mut CancelWatch::Never,
        )
        .await;
        let error = response.error.expect("refused");
        assert_eq!(error.code, ErrorCode::Unsupported, "{}", error.message);
    }

    #[tokio::test]
    async fn a_prompt_over_the_bound_is_refused_and_not_shown() {
        let (queue, mut shown) = mpsc::unbounded_channel();
        let prompts = PromptSink {
            queue,
            merging: Arc::default(),
            queued: None,
        };
        let stdin = stdin_of(b"");
        let request = read_line_request("x".repeat(MAX_PROMPT + 1));
        let response = perform(
            request,
            &stdin,
            Some(prompts.clone()),
            &Resources::none(),
            false,
            &mut CancelWatch::Never,
        )
        .await;
        let error = response.error.expect("refused");
        assert_eq!(error.code, ErrorCode::Invalid);
        assert!(error.message.contains("4096"), "{}", error.message);
        assert!(shown.try_recv().is_err(), "an overlong prompt was queued");
        // One at the bound is shown (the receiver takes it at once).
        let request = read_line_request("x".repeat(MAX_PROMPT));
        let reading = tokio::spawn(async move {
            perform(
                request,
                &stdin,
                Some(prompts),
                &Resources::none(),
                false,
                &mut CancelWatch::Never,
            )
            .await
        });
        let chunk = shown.recv().await.unwrap();
        assert_eq!(chunk.bytes().len(), MAX_PROMPT);
        drop(chunk);
        let response = reading.await.unwrap();
        assert_eq!(response.ok, Some(Reply::Line { line: None }));
    }

    #[tokio::test]
    async fn a_read_waits_until_its_prompt_is_written_so_prompts_cannot_pile_up() {
        // stderr's reader does not read: its pipe holds 64 bytes.
        let (mut reader, writer) = tokio::io::duplex(64);
        let (events_tx, _events) = mpsc::unbounded_channel();
        let stderr = OutputPipe::spawn(
            1,
            StreamId::STDERR,
            "stderr",
            Output::Async(Box::new(writer)),
            1 << 20,
            events_tx,
            None,
        );
        // Stdin at its end: the read itself would be answered at once.
        let stdin = stdin_of(b"");
        let prompt = "p".repeat(MAX_PROMPT);
        let resources = Resources::none();
        let mut never = CancelWatch::Never;
        let mut reading = std::pin::pin!(perform(
            read_line_request(prompt.clone()),
            &stdin,
            stderr.prompt_sink(),
            &resources,
            false,
            &mut never,
        ));
        // Not answered while its prompt waits: the server cannot ask again
        // and queue another.
        assert!(reading.as_mut().now_or_never().is_none());
        for _ in 0..100 {
            tokio::task::yield_now().await;
            assert!(reading.as_mut().now_or_never().is_none());
        }
        // Once the reader takes the prompt, the answer comes.
        let mut written = vec![0; prompt.len()];
        reader.read_exact(&mut written).await.unwrap();
        assert_eq!(written, prompt.as_bytes());
        let response = reading.await;
        assert_eq!(response.ok, Some(Reply::Line { line: None }));
    }

    #[tokio::test]
    async fn a_prompt_on_a_file_stays_in_order_with_the_output_written_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("err");
        let file = std::fs::File::create(&path).unwrap();
        let gate = Arc::new(tokio::sync::RwLock::new(()));
        let (pipe, mut events) = pipe_on(Output::File(file), Some(gate.clone()), NEAR);
        let prompts = pipe.prompt_sink().unwrap();
        // The writer thread is held (a consent prompt on screen).
        let consent = gate.clone().write_owned().await;
        let mut showing = std::pin::pin!(prompts.show("Name: ".into()));
        assert!(showing.as_mut().now_or_never().is_none());
        // The server's next output waits behind the prompt.
        assert!(matches!(pipe.push(remote(b"out")), Pushed::Queued));
        drop(consent);
        showing.await;
        match events.recv().await.unwrap() {
            Event::Consumed { len, .. } => assert_eq!(len, 3),
            Event::Failed { error, .. } => panic!("{error}"),
        }
        // Nothing is left queued: written at once again.
        assert!(matches!(pipe.push(remote(b"!")), Pushed::Written(1)));
        assert_eq!(std::fs::read(&path).unwrap(), b"Name: out!");
    }

    /// A read the server cancels before input comes ends `cancelled` and
    /// takes nothing: the line typed afterwards goes to the next read. One
    /// cancelled with input already there takes nothing either.
    #[tokio::test]
    async fn a_cancelled_read_takes_no_input() {
        let (mut typing, input) = tokio::io::duplex(64);
        let stdin: Mutex<BufReader<Box<dyn AsyncRead + Send + Unpin>>> =
            Mutex::new(BufReader::new(Box::new(input)));
        let resources = Resources::none();
        let read = |max| Request {
            id: terminalwire_protocol::RequestId(1),
            op: Operation::StdinRead { max },
        };
        for request in [read_line_request("? ".into()), read(100)] {
            let (cancel, told) = tokio::sync::oneshot::channel();
            let mut watch = CancelWatch::Open(told);
            let mut reading = std::pin::pin!(perform(
                request, &stdin, None, &resources, false, &mut watch
            ));
            assert!(reading.as_mut().now_or_never().is_none(), "no input yet");
            cancel.send(()).unwrap();
            let error = reading.await.error.expect("cancelled");
            assert_eq!(error.code, ErrorCode::Cancelled);
        }
        typing.write_all(b"typed late\n").await.unwrap();
        // Cancelled with the line already there: it is left too.
        let (cancel, told) = tokio::sync::oneshot::channel();
        cancel.send(()).unwrap();
        let mut watch = CancelWatch::Open(told);
        let request = read_line_request("? ".into());
        let response = perform(request, &stdin, None, &resources, false, &mut watch).await;
        assert_eq!(
            response.error.map(|error| error.code),
            Some(ErrorCode::Cancelled)
        );
        let mut never = CancelWatch::Never;
        let request = read_line_request("? ".into());
        let response = perform(request, &stdin, None, &resources, false, &mut never).await;
        assert_eq!(
            response.ok,
            Some(Reply::Line {
                line: Some("typed late".into())
            })
        );
    }

    /// Stdin as a terminal gives it: what was typed, then one end of file
    /// (Ctrl-D), then nothing until more is typed.
    struct TypedThenCtrlD(Option<&'static [u8]>, bool);

    impl AsyncRead for TypedThenCtrlD {
        fn poll_read(
            mut self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
            buf: &mut tokio::io::ReadBuf<'_>,
        ) -> std::task::Poll<io::Result<()>> {
            if let Some(typed) = self.0.take() {
                buf.put_slice(typed);
            } else if std::mem::take(&mut self.1) {
                // The end of file: a read of nothing, once.
            } else {
                return std::task::Poll::Pending;
            }
            std::task::Poll::Ready(Ok(()))
        }
    }

    /// One Ctrl-D on a terminal ends the app's input, as it ends `cat`'s: a
    /// read took it while waiting for input, then waited for a second one.
    #[tokio::test]
    async fn one_end_of_file_from_a_terminal_ends_a_read() {
        let resources = Resources::none();
        let read = Request {
            id: terminalwire_protocol::RequestId(1),
            op: Operation::StdinRead { max: 100 },
        };
        for request in [read, read_line_request("? ".into())] {
            let stdin: Mutex<BufReader<Box<dyn AsyncRead + Send + Unpin>>> = Mutex::new(
                BufReader::new(Box::new(TypedThenCtrlD(Some(b"abc\n"), true))),
            );
            let mut never = CancelWatch::Never;
            let first = perform(request.clone(), &stdin, None, &resources, false, &mut never).await;
            assert!(first.error.is_none(), "{first:?}");
            let second = perform(request, &stdin, None, &resources, false, &mut never);
            let second = tokio::time::timeout(Duration::from_secs(5), second)
                .await
                .expect("the end of file was not seen: the read waits for another");
            assert!(
                matches!(
                    second.ok,
                    Some(Reply::Line { line: None }) | Some(Reply::Data { eof: true, .. })
                ),
                "{second:?}"
            );
        }
    }

    #[tokio::test]
    async fn read_line_strips_endings_and_reports_eof() {
        let mut input: &[u8] = b"first\r\nsecond\nlast";
        assert_eq!(
            read_line(&mut input).await.unwrap(),
            Reply::Line {
                line: Some("first".into())
            }
        );
        assert_eq!(
            read_line(&mut input).await.unwrap(),
            Reply::Line {
                line: Some("second".into())
            }
        );
        assert_eq!(
            read_line(&mut input).await.unwrap(),
            Reply::Line {
                line: Some("last".into())
            }
        );
        assert_eq!(
            read_line(&mut input).await.unwrap(),
            Reply::Line { line: None }
        );
    }

    #[tokio::test]
    async fn overlong_and_invalid_lines_are_errors() {
        let long = vec![b'x'; MAX_LINE + 10];
        let mut input: &[u8] = &long;
        assert_eq!(
            read_line(&mut input).await.unwrap_err().code,
            ErrorCode::Invalid
        );
        // The refused line goes as a whole: what follows is the next line,
        // not the refused line's end.
        let mut long = vec![b'y'; 3 * MAX_LINE];
        long.extend_from_slice(b"\nnext\n");
        let mut input = tokio::io::BufReader::with_capacity(1000, &long[..]);
        assert_eq!(
            read_line(&mut input).await.unwrap_err().code,
            ErrorCode::Invalid
        );
        assert_eq!(
            read_line(&mut input).await.unwrap(),
            Reply::Line {
                line: Some("next".into())
            }
        );
        assert_eq!(
            read_line(&mut input).await.unwrap(),
            Reply::Line { line: None }
        );
        let mut input: &[u8] = b"\xff\xfe\n";
        assert_eq!(
            read_line(&mut input).await.unwrap_err().code,
            ErrorCode::Invalid
        );
    }
}
