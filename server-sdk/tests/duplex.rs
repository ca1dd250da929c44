//! In-memory tests: the SDK's [`Terminal`] and the real client session engine
//! (`terminalwire_client::session::run`) over a `tokio::io::duplex` pipe with a
//! tiny buffer, each side wrapped in a tungstenite WebSocket. No sockets, no
//! ports, no child processes; every session is bounded by a deadline so a hang
//! fails the test instead of stalling it.
//!
//! The server side implements the SDK's public [`Transport`] trait for a
//! tungstenite `WebSocketStream` ([`WsTransport`]), optionally with a tap that
//! sees every frame the server sends (used to check flow control).

#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests fail loudly")]

use std::collections::BTreeSet;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context as TaskContext, Poll};
use std::time::Duration;

use futures_util::{FutureExt, SinkExt, StreamExt, future};
use terminalwire_client::connect::{Target, websocket_config};
use terminalwire_client::secure::{self, SecureSocket, ServerPin};
use terminalwire_client::session::{self, LocalIo, Output, SessionConfig, Socket};
use terminalwire_client::{ClientError, exit_code, facts};
use terminalwire_protocol::frame::{Ack, Detach, Resume};
use terminalwire_protocol::frame::{
    ColorLevel as WireColor, Hello, Operation, Reply, Request, Response, Software, StreamFacts,
    StreamKind as WireKind, TerminalSize, Welcome, WindowAdjust,
};
use terminalwire_protocol::secure::StaticKey;
use terminalwire_protocol::{
    ClientFrame, ErrorCode, RequestId, ServerFrame, StreamId, VersionRange, codec, resume,
};
use terminalwire_server::transport::{
    FrameReader, FrameWriter, Inbound, Transport, TransportError,
};
use terminalwire_server::{
    ClientFeatures, ColorLevel, Config, Context, Exit, ResourceError, Terminal,
};
use tokio::io::{AsyncWrite, DuplexStream};
use tokio::sync::Notify;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::Role;

/// Bytes the in-memory pipe buffers in each direction: far smaller than one
/// frame, so every frame crosses it in many pieces and both sides block often.
const PIPE_BUFFER: usize = 61;

/// Bound on a whole session; turns a hang into a failure.
const DEADLINE: Duration = Duration::from_secs(10);

/// Bound on the sessions that move megabytes through the tiny pipe (debug builds).
const BULK_DEADLINE: Duration = Duration::from_secs(60);

// ---------------------------------------------------------------------------
// Harness
// ---------------------------------------------------------------------------

/// Sees every encoded frame the server sends, as the client opens it (the
/// wire carries them sealed).
type Tap = Arc<dyn Fn(&[u8]) + Send + Sync>;

/// A client socket that shows each opened frame to a tap.
struct Tapped<S> {
    inner: S,
    tap: Tap,
}

impl<S: Socket> futures_util::Stream for Tapped<S> {
    type Item = Result<Message, tokio_tungstenite::tungstenite::Error>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        let item = std::task::ready!(this.inner.poll_next_unpin(cx));
        if let Some(Ok(Message::Binary(frame))) = &item {
            (this.tap)(frame);
        }
        Poll::Ready(item)
    }
}

impl<S: Socket> futures_util::Sink<Message> for Tapped<S> {
    type Error = tokio_tungstenite::tungstenite::Error;

    fn poll_ready(self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<Result<(), Self::Error>> {
        self.get_mut().inner.poll_ready_unpin(cx)
    }

    fn start_send(self: Pin<&mut Self>, item: Message) -> Result<(), Self::Error> {
        self.get_mut().inner.start_send_unpin(item)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<Result<(), Self::Error>> {
        self.get_mut().inner.poll_flush_unpin(cx)
    }

    fn poll_close(self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<Result<(), Self::Error>> {
        self.get_mut().inner.poll_close_unpin(cx)
    }
}

/// A sink that counts its completed flushes (each one a write of what the
/// server had queued).
struct CountFlushes<S> {
    inner: S,
    flushes: Arc<AtomicUsize>,
}

impl<S: futures_util::Sink<Message> + Unpin> futures_util::Sink<Message> for CountFlushes<S> {
    type Error = S::Error;

    fn poll_ready(self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<Result<(), Self::Error>> {
        self.get_mut().inner.poll_ready_unpin(cx)
    }

    fn start_send(self: Pin<&mut Self>, item: Message) -> Result<(), Self::Error> {
        self.get_mut().inner.start_send_unpin(item)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<Result<(), Self::Error>> {
        let this = self.get_mut();
        let flushed = this.inner.poll_flush_unpin(cx);
        if flushed.is_ready() {
            this.flushes.fetch_add(1, Ordering::SeqCst);
        }
        flushed
    }

    fn poll_close(self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<Result<(), Self::Error>> {
        self.get_mut().inner.poll_close_unpin(cx)
    }
}

/// A tungstenite WebSocket as an SDK transport (what a non-axum server would write).
struct WsTransport {
    socket: WebSocketStream<DuplexStream>,
    tap: Option<Tap>,
    /// Counts the writer's flushes, when set.
    flushes: Option<Arc<AtomicUsize>>,
}

impl WsTransport {
    /// The socket alone: no tap, no flush count.
    fn plain(socket: WebSocketStream<DuplexStream>) -> Self {
        WsTransport {
            socket,
            tap: None,
            flushes: None,
        }
    }
}

impl Transport for WsTransport {
    fn split(self) -> (FrameWriter, FrameReader) {
        let (sink, stream) = self.socket.split();
        let tap = self.tap;
        let sink = CountFlushes {
            inner: sink,
            flushes: self.flushes.unwrap_or_default(),
        };
        let writer = sink
            .sink_map_err(TransportError::new)
            .with(move |frame: bytes::Bytes| {
                if let Some(tap) = &tap {
                    tap(&frame);
                }
                future::ready(Ok::<_, TransportError>(Message::Binary(frame)))
            });
        let reader = stream.filter_map(|message| {
            future::ready(match message {
                Ok(Message::Binary(bytes)) => Some(Ok(Inbound::Frame(bytes.into()))),
                Ok(Message::Ping(_) | Message::Pong(_)) => Some(Ok(Inbound::Heartbeat)),
                Ok(Message::Text(_)) => Some(Ok(Inbound::Unexpected("a text message"))),
                Ok(Message::Frame(_)) => Some(Ok(Inbound::Unexpected("a raw frame"))),
                Ok(Message::Close(_)) => None,
                Err(error) => Some(Err(TransportError::new(error))),
            })
        });
        (Box::pin(writer), Box::pin(reader))
    }
}

/// A WebSocket pair over a tiny in-memory pipe: (client side, server side).
async fn socket_pair() -> (WebSocketStream<DuplexStream>, WebSocketStream<DuplexStream>) {
    socket_pair_buffered(PIPE_BUFFER).await
}

/// A WebSocket pair over an in-memory pipe that buffers `buffer` bytes.
async fn socket_pair_buffered(
    buffer: usize,
) -> (WebSocketStream<DuplexStream>, WebSocketStream<DuplexStream>) {
    let (client, server) = tokio::io::duplex(buffer);
    let config = Some(websocket_config());
    let client = WebSocketStream::from_raw_socket(client, Role::Client, config).await;
    let server = WebSocketStream::from_raw_socket(server, Role::Server, config).await;
    (client, server)
}

/// An in-memory output stream. With `slow`, every write is first refused once
/// (`Pending`, self-woken) and then accepts at most that many bytes.
#[derive(Clone, Default)]
struct Capture {
    bytes: Arc<Mutex<Vec<u8>>>,
    /// Bytes accepted so far (the client has consumed them).
    written: Arc<AtomicU64>,
    slow: Option<usize>,
    ready: bool,
    /// Every write fails with a broken pipe (the reader went away).
    broken: bool,
}

impl Capture {
    fn slow(max_write: usize) -> Self {
        Capture {
            slow: Some(max_write),
            ..Capture::default()
        }
    }

    fn take(&self) -> Vec<u8> {
        std::mem::take(&mut *self.bytes.lock().unwrap())
    }
}

impl AsyncWrite for Capture {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if self.broken {
            return Poll::Ready(Err(io::ErrorKind::BrokenPipe.into()));
        }
        let mut n = buf.len();
        if let Some(max) = self.slow {
            if !self.ready {
                self.ready = true;
                cx.waker().wake_by_ref();
                return Poll::Pending;
            }
            self.ready = false;
            n = n.min(max);
        }
        self.bytes.lock().unwrap().extend_from_slice(&buf[..n]);
        self.written.fetch_add(n as u64, Ordering::SeqCst);
        Poll::Ready(Ok(n))
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut TaskContext<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut TaskContext<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

/// What a client session ended with.
struct Run {
    result: Result<u8, ClientError>,
    stdout: Vec<u8>,
    stderr: Vec<u8>,
}

impl Run {
    fn stdout_text(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }

    fn stderr_text(&self) -> String {
        String::from_utf8_lossy(&self.stderr).into_owned()
    }

    /// The command's exit status; fails the test on a client error.
    fn status(&self) -> u8 {
        match &self.result {
            Ok(status) => *status,
            Err(error) => panic!(
                "client error {error} (exit {}); stderr: {}",
                error.exit_code(),
                self.stderr_text()
            ),
        }
    }

    fn error(&self) -> &ClientError {
        match &self.result {
            Ok(status) => panic!(
                "expected a client error, got status {status}; stderr: {}",
                self.stderr_text()
            ),
            Err(error) => error,
        }
    }
}

/// The hello the real client would send for `app ARGS...` at `ws://example.test`.
fn hello(args: &[&str]) -> Hello {
    let target = Target::parse("ws://example.test/terminal").unwrap();
    facts::hello(
        &target,
        "app".into(),
        args.iter().map(|&arg| arg.to_owned()).collect(),
    )
    .unwrap()
}

/// A session of the real client engine against `terminal`.
struct Session {
    hello: Hello,
    stdin: Vec<u8>,
    /// Stdin from a pipe the test writes into, instead of `stdin`.
    stdin_pipe: Option<DuplexStream>,
    stdout: Capture,
    stderr: Capture,
    tap: Option<Tap>,
    config: SessionConfig,
    deadline: Duration,
}

impl Session {
    fn new(hello: Hello) -> Self {
        Session {
            hello,
            stdin: Vec::new(),
            stdin_pipe: None,
            stdout: Capture::default(),
            stderr: Capture::default(),
            tap: None,
            config: SessionConfig::default(),
            deadline: DEADLINE,
        }
    }

    fn args(args: &[&str]) -> Self {
        Session::new(hello(args))
    }

    fn stdin(mut self, stdin: &[u8]) -> Self {
        self.stdin = stdin.to_vec();
        self
    }

    /// Stdin is a pipe; what the test writes into the returned end.
    fn stdin_pipe(mut self) -> (Self, DuplexStream) {
        let (typing, input) = tokio::io::duplex(1024);
        self.stdin_pipe = Some(input);
        (self, typing)
    }

    /// Runs the session to its end on both sides.
    async fn run(self, terminal: &Terminal) -> Run {
        let (client_socket, server_socket) = socket_pair().await;
        let transport = WsTransport::plain(server_socket);
        let tap = self.tap;
        let io = LocalIo {
            stdout: Output::Async(Box::new(self.stdout.clone())),
            stderr: Output::Async(Box::new(self.stderr.clone())),
            stdin: match self.stdin_pipe {
                Some(pipe) => Box::new(pipe),
                None => Box::new(io::Cursor::new(self.stdin)),
            },
        };
        let config = self.config;
        let client = async {
            let socket = secure_client(client_socket).await;
            match tap {
                Some(tap) => {
                    session::run(Tapped { inner: socket, tap }, self.hello, io, &config).await
                }
                None => session::run(socket, self.hello, io, &config).await,
            }
        };
        let both = async { tokio::join!(terminal.serve(transport), client).1 };
        let result = tokio::time::timeout(self.deadline, both)
            .await
            .expect("the session hung");
        Run {
            result,
            stdout: self.stdout.take(),
            stderr: self.stderr.take(),
        }
    }
}

/// A deterministic byte pattern (xorshift).
fn pattern(len: usize, seed: u64) -> Vec<u8> {
    let mut state = seed | 1;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 24) as u8
        })
        .collect()
}

/// Writes `bytes` in uneven pieces (1 byte up to well over one data chunk).
async fn write_unevenly(out: terminalwire_server::Output, bytes: &[u8]) -> io::Result<()> {
    const SIZES: [usize; 8] = [1, 7, 4093, 65_535, 65_537, 3, 200_003, 131_072];
    let mut rest = bytes;
    let mut i = 0;
    while !rest.is_empty() {
        let n = SIZES[i % SIZES.len()].min(rest.len());
        let (chunk, tail) = rest.split_at(n);
        out.write_all(chunk).await?;
        rest = tail;
        i += 1;
    }
    Ok(())
}

/// Asserts byte equality without printing megabytes on failure.
fn assert_same_bytes(what: &str, got: &[u8], want: &[u8]) {
    if let Some(at) = got.iter().zip(want).position(|(a, b)| a != b) {
        panic!(
            "{what}: first difference at byte {at} (got {} bytes, want {})",
            got.len(),
            want.len()
        );
    }
    assert_eq!(got.len(), want.len(), "{what}: length differs");
}

/// The command used by several tests: behaviour chosen by its first argument.
fn multi_command() -> Terminal {
    Terminal::new(|ctx: Context| async move {
        match ctx.args().first().map(String::as_str) {
            Some("fail") => Err(anyhow::anyhow!("disk full").context("saving")),
            Some("panic") => panic!("secret panic detail"),
            Some("exit") => {
                ctx.stdout().println("before exit").await?;
                Err(Exit(42).into())
            }
            Some("status") => {
                ctx.stderr().print("warn").await?;
                Ok(7u8)
            }
            _ => {
                ctx.stdout().println("fine").await?;
                Ok(0)
            }
        }
    })
}

// ---------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------

/// What the command saw of its context in the hello test.
#[derive(Debug, Default, Clone)]
struct Seen {
    args: Vec<String>,
    program: String,
    client_name: String,
    client_version: String,
    os: String,
    arch: String,
    authority: String,
    origin: Option<String>,
    login_page: Option<String>,
    features: ClientFeatures,
    stdout_tty: bool,
    stdout_size: Option<(u16, u16)>,
    stdout_color: Option<ColorLevel>,
    term: Option<String>,
    session_id: String,
}

/// The app learns what the session can do in its own terms: here, a client
/// that does not cancel given-up reads (an older one) and does not ask to
/// resume. (The real client's features: the hello test here, and a detach
/// end to end.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_app_sees_the_features_the_client_and_server_agreed_on() {
    let seen = Arc::new(Mutex::new(None::<ClientFeatures>));
    let seen_in_command = seen.clone();
    let terminal = Terminal::new(move |ctx: Context| {
        let seen = seen_in_command.clone();
        async move {
            *seen.lock().unwrap() = Some(ctx.client().features);
        }
    });
    let mut hello = hello(&[]);
    hello.capabilities = ["stdout", "stderr", "exit", "stdin.line"]
        .map(str::to_owned)
        .to_vec();
    let run = Session::new(hello).run(&terminal).await;
    assert_eq!(run.status(), 0, "{}", run.stderr_text());
    let features = seen.lock().unwrap().expect("the command ran");
    assert!(!features.resumable);
    assert!(!features.cancels_reads);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hello_prints_the_greeting_and_sees_the_clients_facts() {
    let seen = Arc::new(Mutex::new(None::<Seen>));
    let seen_in_command = seen.clone();
    let terminal = Terminal::new(move |ctx: Context| {
        let seen = seen_in_command.clone();
        async move {
            let client = ctx.client();
            let terminal = ctx.terminal();
            *seen.lock().unwrap() = Some(Seen {
                args: ctx.args().to_vec(),
                program: ctx.program_name().to_owned(),
                client_name: client.name.clone(),
                client_version: client.version.clone(),
                os: client.os.clone(),
                arch: client.arch.clone(),
                authority: client.authority.clone(),
                origin: client.origin.clone(),
                login_page: ctx.web_url("/login"),
                features: client.features,
                stdout_tty: terminal.stdout.is_tty(),
                stdout_size: terminal.stdout.size,
                stdout_color: Some(ctx.stdout().info().color),
                term: terminal.term.clone(),
                session_id: ctx.session_id().to_owned(),
            });
            let name = ctx.args().first().cloned().unwrap_or_default();
            ctx.stdout().println(format!("Hello, {name}!")).await
        }
    });

    let mut hello = hello(&["Ada Lovelace", "--x"]);
    hello.terminal.stdout = StreamFacts {
        kind: WireKind::Tty,
        size: Some(TerminalSize {
            cols: 120,
            rows: 40,
        }),
        color: WireColor::Ansi256,
    };
    hello.terminal.term = Some("xterm-256color".into());
    let sent = hello.clone();
    let run = Session::new(hello).run(&terminal).await;

    assert_eq!(run.status(), 0);
    assert_eq!(run.stdout_text(), "Hello, Ada Lovelace!\n");
    assert_eq!(run.stderr_text(), "");
    let seen = seen.lock().unwrap().clone().expect("the command ran");
    assert_eq!(seen.args, ["Ada Lovelace", "--x"]);
    assert_eq!(seen.program, "app");
    assert_eq!(seen.client_name, "terminalwire");
    assert_eq!(seen.client_version, sent.client.version);
    assert_eq!(seen.os, std::env::consts::OS);
    assert_eq!(seen.arch, std::env::consts::ARCH);
    assert_eq!(seen.authority, "example.test");
    assert_eq!(seen.origin.as_deref(), Some("http://example.test"));
    assert_eq!(
        seen.login_page.as_deref(),
        Some("http://example.test/login")
    );
    // The real client cancels given-up reads; its hello here does not ask
    // to resume.
    assert!(seen.features.cancels_reads);
    assert!(!seen.features.resumable);
    assert!(seen.stdout_tty);
    assert_eq!(seen.stdout_size, Some((120, 40)));
    assert_eq!(seen.stdout_color, Some(ColorLevel::Ansi256));
    assert_eq!(seen.term.as_deref(), Some("xterm-256color"));
    assert!(!seen.session_id.is_empty());
    assert_eq!(terminal.session_count(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn megabytes_of_uneven_output_arrive_byte_exact() {
    let stdout = Arc::new(pattern(8 * 1024 * 1024 + 12_345, 1));
    let stderr = Arc::new(pattern(1024 * 1024 + 777, 2));
    let (out, err) = (stdout.clone(), stderr.clone());
    let terminal = Terminal::new(move |ctx: Context| {
        let (out, err) = (out.clone(), err.clone());
        async move {
            // Both streams at once, so their windows and frames interleave.
            let (a, b) = tokio::join!(
                write_unevenly(ctx.stdout(), &out),
                write_unevenly(ctx.stderr(), &err)
            );
            a.and(b)
        }
    });
    let mut session = Session::args(&[]);
    session.deadline = BULK_DEADLINE;
    let run = session.run(&terminal).await;
    assert_eq!(run.status(), 0);
    assert_same_bytes("stdout", &run.stdout, &stdout);
    assert_same_bytes("stderr", &run.stderr, &stderr);
}

/// Checks, at every data frame the server sends, that it has no more than the
/// client's window outstanding (sent but not yet written out by the client).
struct FlowProbe {
    window: u64,
    max_chunk: usize,
    consumed: [Arc<AtomicU64>; 2],
    sent: [AtomicU64; 2],
    max_outstanding: [AtomicU64; 2],
    oversized: AtomicUsize,
    frames: AtomicUsize,
}

impl FlowProbe {
    fn observe(&self, frame: &[u8]) {
        let Ok(ServerFrame::Data(data)) = codec::decode::<ServerFrame>(frame) else {
            return;
        };
        let index = match data.sid {
            StreamId::STDOUT => 0,
            StreamId::STDERR => 1,
            _ => return,
        };
        self.frames.fetch_add(1, Ordering::SeqCst);
        if data.bytes.len() > self.max_chunk {
            self.oversized.fetch_add(1, Ordering::SeqCst);
        }
        let sent = self.sent[index].fetch_add(data.bytes.len() as u64, Ordering::SeqCst)
            + data.bytes.len() as u64;
        // Read after the send is counted: consumption only grows, so this
        // over-approximates nothing (a grant needs the bytes consumed first).
        let consumed = self.consumed[index].load(Ordering::SeqCst);
        let outstanding = sent.saturating_sub(consumed);
        self.max_outstanding[index].fetch_max(outstanding, Ordering::SeqCst);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_client_gets_everything_in_order_and_the_window_bounds_the_server() {
    const WINDOW: u32 = 4096;
    // Above the least a server accepts, and no divisor of the window.
    const MAX_CHUNK: u32 = 1500;
    let stdout = Arc::new(pattern(600_000 + 11, 3));
    let stderr = Arc::new(pattern(150_000 + 5, 4));
    let (out, err) = (stdout.clone(), stderr.clone());
    let terminal = Terminal::new(move |ctx: Context| {
        let (out, err) = (out.clone(), err.clone());
        async move {
            let (a, b) = tokio::join!(
                write_unevenly(ctx.stdout(), &out),
                write_unevenly(ctx.stderr(), &err)
            );
            a.and(b)
        }
    });

    let mut hello = hello(&[]);
    hello.window = WINDOW;
    hello.max_chunk = MAX_CHUNK;
    let mut session = Session::new(hello);
    session.stdout = Capture::slow(13);
    session.stderr = Capture::slow(29);
    let probe = Arc::new(FlowProbe {
        window: u64::from(WINDOW),
        max_chunk: MAX_CHUNK as usize,
        consumed: [
            session.stdout.written.clone(),
            session.stderr.written.clone(),
        ],
        sent: Default::default(),
        max_outstanding: Default::default(),
        oversized: AtomicUsize::new(0),
        frames: AtomicUsize::new(0),
    });
    let tap_probe = probe.clone();
    session.tap = Some(Arc::new(move |frame: &[u8]| tap_probe.observe(frame)));
    session.deadline = BULK_DEADLINE;
    let run = session.run(&terminal).await;

    assert_eq!(run.status(), 0);
    assert_same_bytes("stdout", &run.stdout, &stdout);
    assert_same_bytes("stderr", &run.stderr, &stderr);
    assert_eq!(
        probe.oversized.load(Ordering::SeqCst),
        0,
        "chunks over max_chunk"
    );
    assert!(
        probe.frames.load(Ordering::SeqCst) >= (stdout.len() + stderr.len()) / MAX_CHUNK as usize
    );
    for (index, name) in ["stdout", "stderr"].into_iter().enumerate() {
        let max = probe.max_outstanding[index].load(Ordering::SeqCst);
        assert!(max > 0, "{name}: the probe saw no data");
        assert!(
            max <= probe.window,
            "{name}: the server had {max} bytes outstanding with a window of {}",
            probe.window
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_read_lines_each_get_one_distinct_line() {
    const N: usize = 8;
    let got = Arc::new(Mutex::new(Vec::new()));
    let got_in_command = got.clone();
    let terminal = Terminal::new(move |ctx: Context| {
        let got = got_in_command.clone();
        async move {
            let reads = (0..N).map(|_| ctx.read_line(None));
            let lines = future::join_all(reads).await;
            *got.lock().unwrap() = lines;
            ctx.stdout().println("done").await
        }
    });
    let stdin: String = (0..N).map(|i| format!("line {i}\n")).collect();
    let run = Session::args(&[])
        .stdin(stdin.as_bytes())
        .run(&terminal)
        .await;
    assert_eq!(run.status(), 0, "stderr: {}", run.stderr_text());
    assert_eq!(run.stdout_text(), "done\n");
    let lines: Vec<String> = got
        .lock()
        .unwrap()
        .drain(..)
        .map(|line| line.unwrap().expect("a line, not EOF"))
        .collect();
    assert_eq!(lines.len(), N);
    let distinct: BTreeSet<_> = lines.iter().cloned().collect();
    let want: BTreeSet<_> = (0..N).map(|i| format!("line {i}")).collect();
    assert_eq!(distinct, want, "each line exactly once: {lines:?}");
}

/// Raw reads in flight at once get the input in the order they were asked:
/// the client serves stdin requests in their order of arrival.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raw_reads_in_flight_get_the_input_in_order() {
    const N: usize = 48;
    let got = Arc::new(Mutex::new(Vec::new()));
    let got_in_command = got.clone();
    let terminal = Terminal::new(move |ctx: Context| {
        let got = got_in_command.clone();
        async move {
            let stdin = ctx.stdin();
            for _ in 0..20 {
                let reads = (0..N).map(|_| stdin.read_chunk(1));
                for chunk in future::join_all(reads).await {
                    got.lock().unwrap().extend(chunk?);
                }
            }
            ctx.stdout().println("done").await?;
            anyhow::Ok(())
        }
    });
    let stdin: Vec<u8> = (0..N * 20).map(|i| b'a' + (i % 26) as u8).collect();
    let run = Session::args(&[]).stdin(&stdin).run(&terminal).await;
    assert_eq!(run.status(), 0, "stderr: {}", run.stderr_text());
    assert_eq!(
        String::from_utf8_lossy(&got.lock().unwrap()),
        String::from_utf8_lossy(&stdin)
    );
}

/// A read the command gives up (a time-out) is cancelled on the client: the
/// line typed afterwards goes to the next read, which shows its own prompt.
/// (The line went to the given-up read and was lost, and the next read
/// waited for another.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_given_up_is_cancelled_and_the_next_read_gets_the_line() {
    let gave_up = Arc::new(Notify::new());
    let gave_up_in_command = gave_up.clone();
    let terminal = Terminal::new(move |ctx: Context| {
        let gave_up = gave_up_in_command.clone();
        async move {
            // Nothing is typed until the test hears of the time-out.
            let first =
                tokio::time::timeout(Duration::from_millis(50), ctx.read_line(Some("first? ")))
                    .await;
            gave_up.notify_one();
            let second = ctx.read_line(Some("second? ")).await?;
            ctx.stdout()
                .println(format!("timed out {}, then {second:?}", first.is_err()))
                .await?;
            anyhow::Ok(())
        }
    });
    let run = typing_once_told(Session::args(&[]), &terminal, &gave_up, b"typed late\n").await;
    assert_eq!(run.status(), 0, "stderr: {}", run.stderr_text());
    assert_eq!(
        run.stdout_text(),
        "timed out true, then Some(\"typed late\")\n"
    );
    assert_eq!(run.stderr_text(), "first? second? ");
}

/// A byte read given up, then answered (past the server's `cancel`) with
/// more bytes than it asked for: the answer is refused as it would have
/// been had the read waited (`ResourceError::TooLarge`), not kept for the
/// next reads. Kept, a hostile client handed the app bytes it never asked
/// for, and each small read after it copied what was left of up to a
/// megabyte (a read of 16 bytes at a time, thousands of times a megabyte).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_byte_read_given_up_and_answered_with_more_than_asked_keeps_nothing() {
    let give_up = Arc::new(Notify::new());
    let give_up_in_command = give_up.clone();
    let terminal = Terminal::new(move |ctx: Context| {
        let give_up = give_up_in_command.clone();
        async move {
            let stdin = ctx.stdin();
            tokio::select! {
                _ = stdin.read_chunk(4) => return Exit(9),
                () = give_up.notified() => {}
            }
            match stdin.read_chunk(4).await {
                Ok(next) => Exit(u8::try_from(next.len()).unwrap_or(u8::MAX)),
                Err(_) => Exit(8),
            }
        }
    });
    let (client, server) = socket_pair().await;
    let script = async {
        let mut client = welcomed(client).await;
        let mut given_up = None;
        loop {
            match next_server(&mut client).await {
                Some(ServerFrame::Request(request)) if given_up.is_none() => {
                    given_up = Some(request.id);
                    give_up.notify_one();
                }
                Some(ServerFrame::Cancel(cancel)) => {
                    let reply = Reply::Data {
                        bytes: vec![b'x'; 100_000].into(),
                        eof: false,
                    };
                    let answer = ClientFrame::Response(Response::ok(cancel.id, reply));
                    send_client(&mut client, &answer).await;
                }
                Some(ServerFrame::Request(request)) => {
                    let reply = Reply::Data {
                        bytes: b"ok".to_vec().into(),
                        eof: false,
                    };
                    let answer = ClientFrame::Response(Response::ok(request.id, reply));
                    send_client(&mut client, &answer).await;
                }
                Some(ServerFrame::Exit(exit)) => break exit.status,
                Some(_) => {}
                None => panic!("the session ended without an exit"),
            }
        }
    };
    // The next read asked the client again and got its two bytes.
    assert_eq!(serve_script(&terminal, server, script).await, 2);
}

/// Runs `session` of `terminal` with stdin a pipe into which `typed` is
/// written once `told` is notified (the pipe stays open to the end).
async fn typing_once_told(
    session: Session,
    terminal: &Terminal,
    told: &Notify,
    typed: &[u8],
) -> Run {
    let (session, mut typing) = session.stdin_pipe();
    let typist = async {
        told.notified().await;
        tokio::io::AsyncWriteExt::write_all(&mut typing, typed)
            .await
            .unwrap();
        typing
    };
    tokio::join!(session.run(terminal), typist).0
}

/// A read given up while it waits for its turn on the client (behind
/// another read) is cancelled there: it never shows its prompt nor takes
/// the line meant for the read after it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_given_up_while_waiting_for_its_turn_takes_nothing() {
    let gave_up = Arc::new(Notify::new());
    let gave_up_in_command = gave_up.clone();
    let terminal = Terminal::new(move |ctx: Context| {
        let gave_up = gave_up_in_command.clone();
        async move {
            let first = ctx.read_line(Some("a? "));
            let behind = async {
                let given_up =
                    tokio::time::timeout(Duration::from_millis(50), ctx.read_line(Some("b? ")))
                        .await
                        .is_err();
                gave_up.notify_one();
                given_up
            };
            let (first, given_up) = tokio::join!(first, behind);
            let third = ctx.read_line(Some("c? ")).await?;
            ctx.stdout()
                .println(format!("{:?} {given_up} {third:?}", first?))
                .await?;
            anyhow::Ok(())
        }
    });
    let run = typing_once_told(Session::args(&[]), &terminal, &gave_up, b"x\ny\n").await;
    assert_eq!(run.status(), 0, "stderr: {}", run.stderr_text());
    assert_eq!(run.stdout_text(), "Some(\"x\") true Some(\"y\")\n");
    assert_eq!(run.stderr_text(), "a? c? ");
}

/// A scripted client that plays the given-up read's race: its answer, a
/// typed line, left before the server's `cancel` arrived. The next read with
/// the same prompt gets that line without asking the client again; a client
/// that does not know `cancel` is not sent one, and its late answer goes to
/// the next read too. A read with another prompt asks the client.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_line_read_for_a_read_given_up_goes_to_the_next_read() {
    for knows_cancel in [true, false] {
        let gave_up = Arc::new(Notify::new());
        let gave_up_in_command = gave_up.clone();
        let terminal = Terminal::new(move |ctx: Context| {
            let gave_up = gave_up_in_command.clone();
            async move {
                let first =
                    tokio::time::timeout(Duration::from_millis(50), ctx.read_line(Some("name")))
                        .await;
                gave_up.notify_one();
                let second = ctx.read_line(Some("name")).await?;
                let other = ctx.read_line(Some("other")).await?;
                ctx.stdout()
                    .println(format!(
                        "timed out {}, then {second:?}, then {other:?}",
                        first.is_err()
                    ))
                    .await?;
                anyhow::Ok(())
            }
        });
        let (client, server) = socket_pair().await;
        let script = async {
            let mut client = secure_client(client).await;
            let mut hello = hello(&[]);
            if !knows_cancel {
                hello
                    .capabilities
                    .retain(|capability| capability != "cancel");
            }
            send_client(&mut client, &ClientFrame::Hello(hello)).await;
            assert!(matches!(
                next_server(&mut client).await,
                Some(ServerFrame::Welcome(_))
            ));
            let Some(ServerFrame::Request(first)) = next_server(&mut client).await else {
                panic!("expected the first read");
            };
            let mut seen = Vec::new();
            if knows_cancel {
                let cancel = next_server(&mut client).await;
                seen.push(format!("{cancel:?}"));
            }
            gave_up.notified().await;
            // Typed before the cancel came: the answer leaves all the same.
            let answer = Response::ok(
                first.id,
                Reply::Line {
                    line: Some("typed in time".into()),
                },
            );
            send_client(&mut client, &ClientFrame::Response(answer)).await;
            let mut stdout = Vec::new();
            loop {
                match next_server(&mut client).await {
                    Some(ServerFrame::Data(data)) => stdout.extend_from_slice(&data.bytes),
                    Some(ServerFrame::Request(request)) => {
                        seen.push(format!("{:?}", request.op));
                        send_client(&mut client, &answer_to_line_read(request)).await;
                    }
                    Some(ServerFrame::Exit(exit)) => {
                        seen.push(format!("exit {}", exit.status));
                        break;
                    }
                    other => seen.push(format!("{other:?}")),
                }
            }
            (seen, String::from_utf8_lossy(&stdout).into_owned())
        };
        let (seen, stdout) = serve_script(&terminal, server, script).await;
        let other = Operation::StdinReadLine {
            prompt: Some("other".into()),
        };
        let mut want = vec![format!("{other:?}"), "exit 0".to_owned()];
        if knows_cancel {
            want.insert(
                0,
                format!(
                    "{:?}",
                    Some(ServerFrame::Cancel(terminalwire_protocol::frame::Cancel {
                        id: terminalwire_protocol::RequestId(1)
                    }))
                ),
            );
        }
        assert_eq!(seen, want, "knows cancel: {knows_cancel}");
        assert_eq!(
            stdout,
            "timed out true, then Some(\"typed in time\"), then Some(\"answer to other\")\n"
        );
    }
}

/// A line typed for a line read given up, then a stdin reader that reads
/// bytes typed after it and is dropped holding some: the next line reads
/// with that prompt get the line first, then those bytes, as typed. (The
/// bytes came first: what a dropped reader held went in front of every
/// line kept.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_line_typed_for_a_read_given_up_comes_before_what_a_reader_put_back() {
    use tokio::io::AsyncBufReadExt;
    let gave_up = Arc::new(Notify::new());
    let gave_up_in_command = gave_up.clone();
    let terminal = Terminal::new(move |ctx: Context| {
        let gave_up = gave_up_in_command.clone();
        async move {
            let first =
                tokio::time::timeout(Duration::from_millis(50), ctx.read_line(Some("p "))).await;
            gave_up.notify_one();
            let mut by_reader = String::new();
            {
                let mut reader = ctx.stdin().reader();
                reader.read_line(&mut by_reader).await?;
            }
            let mut lines = Vec::new();
            for _ in 0..3 {
                lines.push(ctx.read_line(Some("p ")).await?);
            }
            ctx.stdout()
                .println(format!(
                    "timed out {}, the reader {by_reader:?}, then {lines:?}",
                    first.is_err()
                ))
                .await?;
            anyhow::Ok(())
        }
    });
    let (client, server) = socket_pair().await;
    let script = async {
        let mut client = welcomed(client).await;
        let Some(ServerFrame::Request(first)) = next_server(&mut client).await else {
            panic!("expected the line read");
        };
        let cancel = next_server(&mut client).await;
        assert!(matches!(cancel, Some(ServerFrame::Cancel(_))), "{cancel:?}");
        gave_up.notified().await;
        // Typed before the cancel came: the answer leaves all the same.
        let line = Reply::Line {
            line: Some("typed first".into()),
        };
        send_client(
            &mut client,
            &ClientFrame::Response(Response::ok(first.id, line)),
        )
        .await;
        // Typed after it, for the reader's two reads.
        let mut typed_later = [&b"B\nC\n"[..], &b"D\n"[..]].into_iter();
        let (mut stdout, mut stderr) = (Vec::new(), Vec::new());
        loop {
            match next_server(&mut client).await {
                Some(ServerFrame::Data(data)) if data.sid == StreamId::STDOUT => {
                    stdout.extend_from_slice(&data.bytes);
                }
                Some(ServerFrame::Data(data)) => stderr.extend_from_slice(&data.bytes),
                Some(ServerFrame::Request(request)) => {
                    let Operation::StdinRead { .. } = request.op else {
                        panic!("unexpected {:?}", request.op);
                    };
                    let bytes = typed_later.next().expect("no third read");
                    let reply = Reply::Data {
                        bytes: bytes.to_vec().into(),
                        eof: false,
                    };
                    send_client(
                        &mut client,
                        &ClientFrame::Response(Response::ok(request.id, reply)),
                    )
                    .await;
                }
                // The reader's second read, given up as it was dropped.
                Some(ServerFrame::Cancel(_)) => {}
                Some(ServerFrame::Exit(exit)) => {
                    assert_eq!(exit.status, 0);
                    break;
                }
                other => panic!("unexpected {other:?}"),
            }
        }
        (
            String::from_utf8_lossy(&stdout).into_owned(),
            String::from_utf8_lossy(&stderr).into_owned(),
        )
    };
    let (stdout, stderr) = serve_script(&terminal, server, script).await;
    // The server shows the prompt of the lines it reads from bytes; the
    // client showed the first line's.
    assert_eq!(stderr, "p p ");
    assert_eq!(
        stdout,
        "timed out true, the reader \"B\\n\", then [Some(\"typed first\"), Some(\"C\"), Some(\"D\")]\n"
    );
}

/// Stdin through `AsyncRead` and stdout through `AsyncWrite`:
/// `tokio::io::copy` moves megabytes byte-exact in uneven pieces.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stdin_copied_to_stdout_through_async_read_and_write_arrives_whole() {
    let terminal = Terminal::new(|ctx: Context| async move {
        let mut stdout = ctx.stdout().writer();
        let copied = tokio::io::copy(&mut ctx.stdin().reader(), &mut stdout).await?;
        tokio::io::AsyncWriteExt::flush(&mut stdout).await?;
        ctx.stderr().print(format!("copied {copied}")).await?;
        anyhow::Ok(())
    });
    let stdin = pattern(3_000_000, 11);
    let mut session = Session::args(&[]).stdin(&stdin);
    session.deadline = BULK_DEADLINE;
    let run = session.run(&terminal).await;
    assert_eq!(run.status(), 0, "stderr: {}", run.stderr_text());
    assert_eq!(run.stderr_text(), format!("copied {}", stdin.len()));
    assert_same_bytes("stdout", &run.stdout, &stdin);
}

/// A stdin reader keeps two reads in flight: a scripted client that answers
/// only once two wait gets the whole input across. (One read at a time, it
/// waited a round trip per chunk; here it would wait forever.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stdin_reader_reads_ahead() {
    let terminal = Terminal::new(|ctx: Context| async move {
        let mut all = Vec::new();
        tokio::io::AsyncReadExt::read_to_end(&mut ctx.stdin().reader(), &mut all).await?;
        ctx.stdout().print(format!("read {}", all.len())).await?;
        anyhow::Ok(())
    });
    let mut waiting = Vec::new();
    let mut answered = 0;
    let (status, stdout) = answering_stdin_reads(&terminal, |id| {
        waiting.push(id);
        if waiting.len() < 2 {
            return Vec::new();
        }
        // Ten answers of 1000 bytes, then the end.
        let answers = waiting.drain(..).map(|id| {
            answered += 1;
            (
                id,
                stdin_data(if answered <= 10 { &[7; 1000] } else { b"" }),
            )
        });
        answers.collect()
    })
    .await;
    assert_eq!(status, 0);
    assert_eq!(String::from_utf8_lossy(&stdout), "read 10000");
}

/// Bytes read from stdin, as a client answers them (none: the end).
fn stdin_data(bytes: &[u8]) -> Reply {
    Reply::Data {
        bytes: bytes.to_vec().into(),
        eof: bytes.is_empty(),
    }
}

/// Serves one session of `terminal` to a scripted client that answers its
/// stdin reads as `answers` says when each arrives (which reads, with what)
/// and collects stdout until the exit: (status, stdout).
async fn answering_stdin_reads(
    terminal: &Terminal,
    mut answers: impl FnMut(RequestId) -> Vec<(RequestId, Reply)>,
) -> (u8, Vec<u8>) {
    let (client, server) = socket_pair().await;
    let script = async {
        let mut client = welcomed(client).await;
        let mut stdout = Vec::new();
        loop {
            match next_server(&mut client).await {
                Some(ServerFrame::Request(request)) => {
                    assert!(matches!(request.op, Operation::StdinRead { .. }));
                    for (id, reply) in answers(request.id) {
                        let answer = ClientFrame::Response(Response::ok(id, reply));
                        send_client(&mut client, &answer).await;
                    }
                }
                Some(ServerFrame::Cancel(_)) => {}
                Some(ServerFrame::Data(data)) => stdout.extend_from_slice(&data.bytes),
                Some(ServerFrame::Exit(exit)) => break (exit.status, stdout),
                other => panic!("unexpected {other:?}"),
            }
        }
    };
    serve_script(terminal, server, script).await
}

/// A write given up (the client's window is closed), then other bytes on
/// the same writer: the given-up write is finished, then the new bytes are
/// written and counted. (The new write was told the old one's length:
/// `write_all` panicked, and the new bytes were never sent.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_output_writer_writes_new_bytes_after_a_write_given_up() {
    let gave_up = Arc::new(Notify::new());
    let gave_up_in_command = gave_up.clone();
    let terminal = Terminal::new(move |ctx: Context| {
        let gave_up = gave_up_in_command.clone();
        async move {
            use tokio::io::AsyncWriteExt;
            let mut out = ctx.stdout().writer();
            let big = vec![b'a'; 1000];
            let timed_out = tokio::time::timeout(Duration::from_millis(100), out.write_all(&big))
                .await
                .is_err();
            gave_up.notify_one();
            out.write_all(b"short").await?;
            ctx.stderr().print(format!("timed out {timed_out}")).await?;
            anyhow::Ok(())
        }
    });
    let (client, server) = socket_pair().await;
    let script = granting_once_given_up(client, &gave_up);
    let (status, stdout, stderr) = serve_script(&terminal, server, script).await;
    assert_eq!(status, 0, "stderr: {}", String::from_utf8_lossy(&stderr));
    assert_eq!(String::from_utf8_lossy(&stderr), "timed out true");
    // The given-up write is finished (it may have been cut anywhere), then
    // the new bytes follow.
    let text = String::from_utf8_lossy(&stdout);
    assert!(
        text.ends_with("short") && text.trim_end_matches("short").bytes().all(|b| b == b'a'),
        "stdout: {text}"
    );
}

/// A stdin reader whose oldest read brings the end of input while its read
/// ahead brings more (a terminal: Ctrl-D, then more typed) gives that to the
/// next read. (It was dropped with the reads ahead.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stdin_reader_at_the_end_leaves_what_came_after_it_to_the_next_read() {
    let terminal = Terminal::new(|ctx: Context| async move {
        let mut all = Vec::new();
        let mut reader = ctx.stdin().reader();
        tokio::io::AsyncReadExt::read_to_end(&mut reader, &mut all).await?;
        drop(reader);
        let next = ctx.stdin().read_chunk(100).await?;
        ctx.stdout()
            .print(format!(
                "{:?} then {:?}",
                String::from_utf8_lossy(&all),
                String::from_utf8_lossy(&next)
            ))
            .await?;
        anyhow::Ok(())
    });
    let mut ids = Vec::new();
    let (status, stdout) = answering_stdin_reads(&terminal, |id| {
        ids.push(id);
        match ids.len() {
            1 => Vec::new(),
            // The read ahead's answer first (answers may come in any
            // order): it is in when the end arrives.
            2 => vec![(ids[1], stdin_data(b"late")), (ids[0], stdin_data(b""))],
            _ => vec![(id, stdin_data(b""))],
        }
    })
    .await;
    assert_eq!(status, 0);
    assert_eq!(String::from_utf8_lossy(&stdout), "\"\" then \"late\"");
}

/// A stdin reader dropped with input in hand and reads in flight loses
/// nothing: the next reads get the rest, in order. (Its buffer and the
/// answers of its reads ahead went with it.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stdin_reader_dropped_early_leaves_the_rest_to_the_next_reads() {
    use tokio::io::AsyncBufReadExt;
    let got = Arc::new(Mutex::new((String::new(), Vec::new())));
    let got_in_command = got.clone();
    let terminal = Terminal::new(move |ctx: Context| {
        let got = got_in_command.clone();
        async move {
            let mut first = String::new();
            {
                let mut reader = ctx.stdin().reader();
                reader.read_line(&mut first).await?;
            }
            let mut rest = Vec::new();
            loop {
                let chunk = ctx.stdin().read_chunk(1000).await?;
                if chunk.is_empty() {
                    break;
                }
                rest.extend_from_slice(&chunk);
            }
            *got.lock().unwrap() = (first, rest);
            anyhow::Ok(())
        }
    });
    let mut stdin = b"header line\n".to_vec();
    stdin.extend_from_slice(&pattern(500_000, 3));
    let mut session = Session::args(&[]).stdin(&stdin);
    session.deadline = BULK_DEADLINE;
    let run = session.run(&terminal).await;
    assert_eq!(run.status(), 0, "stderr: {}", run.stderr_text());
    let (first, rest) = std::mem::take(&mut *got.lock().unwrap());
    assert_eq!(first, "header line\n");
    assert_same_bytes("the rest", &rest, &stdin[first.len()..]);
}

/// Line reads after a stdin reader was dropped start with what it took
/// ahead: stdin is one stream. (They asked the client, which had sent all
/// of a piped input to the reader, and got the end of input.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn line_reads_after_a_dropped_stdin_reader_start_with_what_it_took_ahead() {
    use tokio::io::AsyncBufReadExt;
    let terminal = Terminal::new(|ctx: Context| async move {
        let mut first = String::new();
        {
            let mut reader = ctx.stdin().reader();
            reader.read_line(&mut first).await?;
        }
        let mut lines = vec![first.trim_end().to_owned()];
        while let Some(line) = ctx.read_line(Some("next? ")).await? {
            lines.push(line);
        }
        // The end of input is the end for every kind of read.
        let after = ctx.stdin().read_chunk(100).await?;
        ctx.stdout()
            .print(format!("{lines:?} then {after:?}"))
            .await?;
        anyhow::Ok(())
    });
    let run = Session::args(&[])
        .stdin(b"first\nsecond\r\n\nfourth, the last without a newline")
        .run(&terminal)
        .await;
    assert_eq!(run.status(), 0, "stderr: {}", run.stderr_text());
    assert_eq!(
        String::from_utf8_lossy(&run.stdout),
        r#"["first", "second", "", "fourth, the last without a newline"] then []"#
    );
    // Each line read showed its prompt, the one that found the end too.
    assert_eq!(run.stderr_text(), "next? ".repeat(4));
}

/// A line read given up after it took the start of its line from what a
/// dropped reader took ahead puts it back: the next line read gets the
/// whole line. (It was lost with the read given up.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_line_read_given_up_puts_back_the_start_it_took() {
    assert_eq!(
        line_read_given_up_then_again(b"first\nsec", b"ond\r\n").await,
        r#""first\n" true Some("second")"#
    );
    // A `\r\n` split between the start and the rest is a line's end too.
    assert_eq!(
        line_read_given_up_then_again(b"first\nsec\r", b"\n").await,
        r#""first\n" true Some("sec")"#
    );
    // So is a character split between them one character; and what comes
    // after the line's end is the next read's.
    assert_eq!(
        line_read_given_up_then_again(b"first\ns\xc3", b"\xa9cond\nthird\n").await,
        r#""first\n" true Some("sécond") Some("third")"#
    );
    // A line too long is refused, and skipped to its end, as the client
    // refuses and skips it.
    let mut long = vec![b'x'; 70_000];
    long.extend_from_slice(b"\nnext\n");
    assert_eq!(
        line_read_given_up_then_again(b"first\nxx", &long).await,
        r#""first\n" true invalid request: input line longer than 65536 bytes (skipped) Some("next")"#
    );
}

/// Reads a line with a reader (stdin `typed_first`), then a line read given
/// up, then one more once `typed_later` is typed; what the command saw.
async fn line_read_given_up_then_again(typed_first: &[u8], typed_later: &[u8]) -> String {
    use tokio::io::AsyncBufReadExt;
    let gave_up = Arc::new(Notify::new());
    let gave_up_in_command = gave_up.clone();
    let terminal = Terminal::new(move |ctx: Context| {
        let gave_up = gave_up_in_command.clone();
        async move {
            let mut first = String::new();
            {
                let mut reader = ctx.stdin().reader();
                reader.read_line(&mut first).await?;
            }
            // The rest of the line is not typed yet.
            let given_up =
                tokio::time::timeout(Duration::from_millis(200), ctx.read_line(Some("p ")))
                    .await
                    .is_err();
            gave_up.notify_one();
            let next = match ctx.read_line(Some("p ")).await {
                Ok(line) => format!("{line:?}"),
                Err(error) => error.to_string(),
            };
            ctx.stdout()
                .print(format!("{first:?} {given_up} {next}"))
                .await?;
            // Whatever was typed after it (the pipe stays open: no wait
            // for its end).
            if let Ok(Ok(Some(after))) =
                tokio::time::timeout(Duration::from_millis(200), ctx.read_line(None)).await
            {
                ctx.stdout().print(format!(" {:?}", Some(after))).await?;
            }
            anyhow::Ok(())
        }
    });
    let (session, mut typing) = Session::args(&[]).stdin_pipe();
    let typist = async {
        tokio::io::AsyncWriteExt::write_all(&mut typing, typed_first)
            .await
            .unwrap();
        gave_up.notified().await;
        tokio::io::AsyncWriteExt::write_all(&mut typing, typed_later)
            .await
            .unwrap();
        typing
    };
    let run = tokio::join!(session.run(&terminal), typist).0;
    assert_eq!(run.status(), 0, "stderr: {}", run.stderr_text());
    String::from_utf8_lossy(&run.stdout).into_owned()
}

/// A scripted client answers concurrent requests in reverse order; each
/// `read_line` must still get the answer to its own request (matched by id).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_out_of_order_reach_their_own_requests() {
    const N: usize = 5;
    let got = Arc::new(Mutex::new(Vec::new()));
    let got_in_command = got.clone();
    let terminal = Terminal::new(move |ctx: Context| {
        let got = got_in_command.clone();
        async move {
            let prompts: Vec<String> = (0..N).map(|i| format!("p{i}")).collect();
            let reads = prompts.iter().map(|prompt| ctx.read_line(Some(prompt)));
            *got.lock().unwrap() = future::join_all(reads).await;
        }
    });
    let (client, server) = socket_pair().await;
    let script = async {
        let mut client = welcomed(client).await;
        let mut requests = Vec::new();
        while requests.len() < N {
            match next_server(&mut client).await {
                Some(ServerFrame::Request(request)) => requests.push(request),
                other => panic!("expected a request, got {other:?}"),
            }
        }
        let ids: BTreeSet<_> = requests.iter().map(|request| request.id).collect();
        assert_eq!(ids.len(), N, "request ids are unique");
        for request in requests.into_iter().rev() {
            send_client(&mut client, &answer_to_line_read(request)).await;
        }
        let status = until_exit(&mut client).await;
        assert_eq!(next_server(&mut client).await, None, "nothing after exit");
        status
    };
    let status = serve_script(&terminal, server, script).await;
    assert_eq!(status, 0);
    let got: Vec<_> = got
        .lock()
        .unwrap()
        .iter()
        .map(|line| line.clone().unwrap())
        .collect();
    let want: Vec<_> = (0..N).map(|i| Some(format!("answer to p{i}"))).collect();
    assert_eq!(got, want);
}

/// A command that reads `total` lines, `in_flight` at a time, and exits 0
/// when every read got a line.
fn line_reads_in_flight(total: usize, in_flight: usize) -> Terminal {
    Terminal::new(move |ctx: Context| async move {
        let lines: Vec<_> = futures_util::stream::iter(0..total)
            .map(|i| {
                let ctx = ctx.clone();
                async move { ctx.read_line(Some(&format!("p{i}"))).await }
            })
            .buffer_unordered(in_flight)
            .collect()
            .await;
        let answered = lines
            .iter()
            .filter(|line| matches!(line, Ok(Some(_))))
            .count();
        anyhow::Ok(Exit(if answered == total { 0 } else { 1 }))
    })
}

/// Answers that reach the server together complete their requests
/// together, so the requests the command sends next leave in one write: the
/// server handles every frame it has read before its writer flushes (one
/// write per answer was most of its system calls with requests pipelined).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_that_come_together_let_the_next_requests_leave_together() {
    const TOTAL: usize = 64;
    const IN_FLIGHT: usize = 8;
    let terminal = line_reads_in_flight(TOTAL, IN_FLIGHT);
    // Room for a whole round of answers in the pipe: they arrive together.
    let (client, server) = socket_pair_buffered(64 * 1024).await;
    let flushes = Arc::new(AtomicUsize::new(0));
    let transport = WsTransport {
        socket: server,
        tap: None,
        flushes: Some(flushes.clone()),
    };
    let script = async {
        let mut client = welcomed(client).await;
        let mut answered = 0;
        let mut waiting = Vec::new();
        while answered < TOTAL {
            match next_server(&mut client).await {
                Some(ServerFrame::Request(request)) => waiting.push(request),
                other => panic!("expected a request, got {other:?}"),
            }
            // Every request in flight is here: answer them all at once.
            if waiting.len() == IN_FLIGHT.min(TOTAL - answered) {
                answered += waiting.len();
                for request in waiting.drain(..) {
                    let answer = codec::encode(&answer_to_line_read(request));
                    client.feed(Message::Binary(answer.into())).await.unwrap();
                }
                client.flush().await.unwrap();
            }
        }
        until_exit(&mut client).await
    };
    let (_, status) = tokio::time::timeout(DEADLINE, async {
        tokio::join!(terminal.serve(transport), script)
    })
    .await
    .expect("the session hung");
    assert_eq!(status, 0);
    // About a write per round of answers (8), and the welcome's and the
    // exit's: 12 in all when this was written. A write per answer handled
    // made 26.
    let flushes = flushes.load(Ordering::SeqCst);
    assert!(
        flushes <= 2 * TOTAL / IN_FLIGHT + 2,
        "{flushes} writes for {TOTAL} requests in rounds of {IN_FLIGHT}"
    );
}

/// The same with `resume` on: each round of 32 answers makes our
/// acknowledgement due, and it leaves in the write of the requests the
/// command sends next instead of in a write of its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn our_acknowledgements_leave_with_the_next_requests() {
    const TOTAL: usize = 256;
    const IN_FLIGHT: usize = resume::ACK_EVERY_FRAMES as usize;
    let terminal = line_reads_in_flight(TOTAL, IN_FLIGHT);
    let (client, server) = socket_pair_buffered(256 * 1024).await;
    let flushes = Arc::new(AtomicUsize::new(0));
    let transport = WsTransport {
        socket: server,
        tap: None,
        flushes: Some(flushes.clone()),
    };
    let script = async {
        let mut client = secure_client(client).await;
        let mut hello = hello(&[]);
        hello.capabilities.push("resume".into());
        send_client(&mut client, &ClientFrame::Hello(hello)).await;
        let mut answered = 0;
        let mut acks = 0;
        let mut sequenced = 0;
        let mut waiting = Vec::new();
        let status = loop {
            let frame = next_server(&mut client).await.expect("a frame");
            if frame.is_sequenced() {
                sequenced += 1;
            }
            match frame {
                ServerFrame::Welcome(_) => {}
                ServerFrame::Ack(_) => acks += 1,
                ServerFrame::Request(request) => waiting.push(request),
                ServerFrame::Exit(exit) => break exit.status,
                other => panic!("unexpected {other:?}"),
            }
            if waiting.len() == IN_FLIGHT.min(TOTAL - answered) {
                answered += waiting.len();
                for request in waiting.drain(..) {
                    let answer = codec::encode(&answer_to_line_read(request));
                    client.feed(Message::Binary(answer.into())).await.unwrap();
                }
                client.flush().await.unwrap();
            }
        };
        // The session ends once the exit is acknowledged.
        send_client(&mut client, &ClientFrame::Ack(Ack { seq: sequenced })).await;
        (status, acks)
    };
    let (_, (status, acks)) = tokio::time::timeout(DEADLINE, async {
        tokio::join!(terminal.serve(transport), script)
    })
    .await
    .expect("the session hung");
    assert_eq!(status, 0);
    assert!(
        acks >= TOTAL / IN_FLIGHT - 1,
        "only {acks} acknowledgements"
    );
    // A write per round (8), the welcome's, the exit's and one more: 11 when
    // this was written; 19 with each acknowledgement written on its own.
    let flushes = flushes.load(Ordering::SeqCst);
    assert!(
        flushes <= TOTAL / IN_FLIGHT + 4,
        "{flushes} writes for {TOTAL} requests in rounds of {IN_FLIGHT}, {acks} acknowledged"
    );
}

/// A terminal whose requests always linger for their answers (a minute,
/// turned on by any round trip under three minutes).
fn lingering<F, Fut>(command: F) -> Terminal
where
    F: Fn(Context) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = anyhow::Result<()>> + Send + 'static,
{
    Terminal::with_config(
        command,
        Config {
            linger: Duration::from_secs(60),
            ..Config::default()
        },
    )
}

/// Serves one session of `terminal` on `server` while `script` plays the
/// client; what the script returns.
async fn serve_script<T>(
    terminal: &Terminal,
    server: WebSocketStream<DuplexStream>,
    script: impl Future<Output = T>,
) -> T {
    let transport = WsTransport::plain(server);
    let (_, out) = tokio::time::timeout(DEADLINE, async {
        tokio::join!(terminal.serve(transport), script)
    })
    .await
    .expect("the session hung");
    out
}

/// A resumable session whose client makes every chunk one byte (credit
/// granted a byte at a time; a `max_chunk` under [`Config::MIN_CHUNK`] is
/// refused) and acknowledges nothing: each frame kept for replay counts
/// with its overhead against `replay_limit`, not its 22 bytes alone (the
/// session held five times its limit).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_byte_chunks_count_against_the_replay_limit_with_their_overhead() {
    const LIMIT: usize = 1 << 20;
    let terminal = Terminal::with_config(
        |ctx: Context| async move {
            let out = vec![b'x'; 64 * 1024];
            loop {
                ctx.stdout().write_all(&out).await?;
            }
            #[allow(unreachable_code)]
            anyhow::Ok(())
        },
        Config {
            replay_limit: LIMIT,
            ..Config::default()
        },
    );
    let (client, server) = socket_pair_buffered(1 << 16).await;
    let serving = tokio::spawn({
        let terminal = terminal.clone();
        async move { terminal.serve(WsTransport::plain(server)).await }
    });
    let mut client = secure_client(client).await;
    let mut hello = hello(&[]);
    hello.capabilities.push("resume".into());
    hello.window = 1;
    send_client(&mut client, &ClientFrame::Hello(hello)).await;
    // Everything the server sends before it waits for an acknowledgement,
    // a byte of credit after each byte: surely more than 1000 chunks
    // (however slow the machine), then until it is quiet for half a
    // second: it waits.
    let mut chunks = 0usize;
    while let Ok(Some(frame)) = tokio::time::timeout(
        if chunks > 1000 {
            Duration::from_millis(500)
        } else {
            DEADLINE
        },
        next_server(&mut client),
    )
    .await
    {
        if let ServerFrame::Data(data) = frame {
            assert_eq!(data.bytes.len(), 1);
            chunks += 1;
            let grant = WindowAdjust {
                sid: StreamId::STDOUT,
                bytes: 1,
            };
            send_client(&mut client, &ClientFrame::Window(grant)).await;
        }
    }
    serving.abort();
    assert!(chunks > 1000, "only {chunks} chunks");
    assert!(
        chunks <= LIMIT / 128,
        "{chunks} one-byte chunks kept for replay within a limit of {LIMIT} bytes"
    );
}

/// A hello whose `max_chunk` is under [`Config::MIN_CHUNK`] is refused
/// like one of zero: with a chunk of one byte, every byte the command wrote
/// was a frame of its own, encoded, sealed and sent (a megabyte of output,
/// a million frames). The least is accepted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hello_with_chunks_under_the_minimum_is_refused() {
    let terminal = Terminal::new(|ctx: Context| async move {
        ctx.stdout().write_all(&vec![b'x'; 1 << 20]).await?;
        anyhow::Ok(())
    });
    for max_chunk in [1, Config::MIN_CHUNK - 1] {
        let (client, server) = socket_pair().await;
        let script = async move {
            let mut client = secure_client(client).await;
            let mut hello = hello(&[]);
            hello.max_chunk = max_chunk;
            send_client(&mut client, &ClientFrame::Hello(hello)).await;
            let frames = rest_of_session(&mut client).await;
            let [ServerFrame::Error(error)] = &frames[..] else {
                panic!("max_chunk {max_chunk}: {frames:?}");
            };
            assert_eq!(error.code, ErrorCode::Protocol);
            assert!(error.message.contains("chunk"), "{}", error.message);
        };
        serve_script(&terminal, server, script).await;
    }
    let (client, server) = socket_pair_buffered(1 << 16).await;
    let script = async move {
        let mut client = secure_client(client).await;
        let mut hello = hello(&[]);
        hello.max_chunk = Config::MIN_CHUNK;
        send_client(&mut client, &ClientFrame::Hello(hello)).await;
        let (status, frames) = frames_until_exit(&mut client).await;
        assert!(matches!(frames[0], ServerFrame::Welcome(_)));
        let sent: usize = frames
            .iter()
            .map(|frame| match frame {
                ServerFrame::Data(data) => {
                    assert!(data.bytes.len() <= Config::MIN_CHUNK as usize);
                    data.bytes.len()
                }
                _ => 0,
            })
            .sum();
        (status, sent)
    };
    assert_eq!(serve_script(&terminal, server, script).await, (0, 1 << 20));
}

/// Every field of every log event, as text.
#[derive(Clone, Default)]
struct LoggedFields(Arc<Mutex<Vec<String>>>);

impl tracing::field::Visit for LoggedFields {
    fn record_debug(&mut self, _: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        self.0.lock().unwrap().push(format!("{value:?}"));
    }
    fn record_str(&mut self, _: &tracing::field::Field, value: &str) {
        self.0.lock().unwrap().push(value.to_owned());
    }
}

impl tracing::Subscriber for LoggedFields {
    fn enabled(&self, _: &tracing::Metadata<'_>) -> bool {
        true
    }
    fn new_span(&self, span: &tracing::span::Attributes<'_>) -> tracing::span::Id {
        span.record(&mut self.clone());
        tracing::span::Id::from_u64(1)
    }
    fn record(&self, _: &tracing::span::Id, values: &tracing::span::Record<'_>) {
        values.record(&mut self.clone());
    }
    fn record_follows_from(&self, _: &tracing::span::Id, _: &tracing::span::Id) {}
    fn event(&self, event: &tracing::Event<'_>) {
        event.record(&mut self.clone());
    }
    fn enter(&self, _: &tracing::span::Id) {}
    fn exit(&self, _: &tracing::span::Id) {}
}

/// What a client says of itself is logged cut short and with its control
/// characters escaped: a client wrote 900 kB into one line per connection,
/// and lines of its own.
#[tokio::test(flavor = "current_thread")]
async fn the_log_keeps_a_short_escaped_part_of_what_the_client_says() {
    let logged = LoggedFields::default();
    let _guard = tracing::subscriber::set_default(logged.clone());
    let terminal = Terminal::new(|_ctx: Context| async {});
    let (client, server) = socket_pair().await;
    let serving = tokio::spawn({
        let terminal = terminal.clone();
        async move { terminal.serve(WsTransport::plain(server)).await }
    });
    let mut client = secure_client(client).await;
    let mut hello = hello(&[]);
    hello.client.name = "\u{1b}[2J\nfake log line ".repeat(45_000);
    send_client(&mut client, &ClientFrame::Hello(hello)).await;
    while next_server(&mut client).await.is_some() {}
    serving.await.unwrap();
    let fields = logged.0.lock().unwrap();
    assert!(
        fields.iter().any(|field| field.contains("fake log line")),
        "the client's name is logged: {fields:?}"
    );
    assert_short_and_escaped(&fields);
}

/// A command that fails with an error quoting the client (here, the
/// message of a refused request) logs it cut short and escaped, as the
/// session logs what the client says: a hostile client's message went into
/// the server's log whole, its line breaks and escapes too.
#[tokio::test(flavor = "current_thread")]
async fn a_failure_quoting_the_client_is_logged_short_and_escaped() {
    let logged = LoggedFields::default();
    let _guard = tracing::subscriber::set_default(logged.clone());
    let terminal = Terminal::new(|ctx: Context| async move {
        ctx.file().read("~/notes.txt").await?;
        anyhow::Ok(())
    });
    let (client, server) = socket_pair().await;
    let said = "\u{1b}[2J\nfake log line ".repeat(1000);
    let script = async {
        let mut client = welcomed(client).await;
        let Some(ServerFrame::Request(request)) = next_server(&mut client).await else {
            panic!("expected the read");
        };
        let error = terminalwire_protocol::frame::OpError::new(ErrorCode::Io, said.clone());
        let answer = ClientFrame::Response(Response::error(request.id, error));
        send_client(&mut client, &answer).await;
        until_exit(&mut client).await
    };
    assert_eq!(serve_script(&terminal, server, script).await, 1);
    let fields = logged.0.lock().unwrap();
    assert!(
        fields.iter().any(|field| field.contains("fake log line")),
        "the failure is logged: {fields:?}"
    );
    assert_short_and_escaped(&fields);
}

/// Every logged field is short and holds none of the client's line
/// breaks or escapes.
fn assert_short_and_escaped(fields: &[String]) {
    for field in fields {
        assert!(field.len() < 4096, "a log field of {} bytes", field.len());
        assert!(
            !field.contains(['\n', '\u{1b}']),
            "a log field with the client's control characters: {field:?}"
        );
    }
}

/// A stdin read of no bytes is refused by the SDK itself, at once: sent,
/// it waited for the user to type before the client refused it (and a
/// client of another protocol might answer it as the end of input).
#[tokio::test(flavor = "current_thread")]
async fn a_stdin_read_of_no_bytes_is_refused_without_asking_the_client() {
    let terminal = Terminal::new(|ctx: Context| async move {
        match ctx.stdin().read_chunk(0).await {
            Err(ResourceError::Invalid { .. }) => Exit(3),
            _ => Exit(4),
        }
    });
    let (client, server) = socket_pair().await;
    let script = async {
        let mut client = welcomed(client).await;
        // A request instead of the exit fails here.
        until_exit(&mut client).await
    };
    assert_eq!(serve_script(&terminal, server, script).await, 3);
}

/// A scripted client with a window of 100 bytes, which grants more credit
/// only once `gave_up` is notified (the command gave up a write held up by
/// the shut window); its exit status, stdout and stderr.
async fn granting_once_given_up(
    client: WebSocketStream<DuplexStream>,
    gave_up: &Notify,
) -> (u8, Vec<u8>, Vec<u8>) {
    let mut client = secure_client(client).await;
    let mut hello = hello(&[]);
    hello.window = 100;
    send_client(&mut client, &ClientFrame::Hello(hello)).await;
    assert!(matches!(
        next_server(&mut client).await,
        Some(ServerFrame::Welcome(_))
    ));
    let (mut stdout, mut stderr) = (Vec::new(), Vec::new());
    let mut granted = false;
    loop {
        match next_server(&mut client).await {
            Some(ServerFrame::Data(data)) => {
                if data.sid == StreamId::STDOUT {
                    stdout.extend_from_slice(&data.bytes);
                } else {
                    stderr.extend_from_slice(&data.bytes);
                }
                if !granted {
                    gave_up.notified().await;
                    granted = true;
                    for sid in [StreamId::STDOUT, StreamId::STDERR] {
                        let grant = WindowAdjust {
                            sid,
                            bytes: 1 << 20,
                        };
                        send_client(&mut client, &ClientFrame::Window(grant)).await;
                    }
                }
            }
            Some(ServerFrame::Exit(exit)) => break (exit.status, stdout, stderr),
            other => panic!("unexpected {other:?}"),
        }
    }
}

/// A scripted client, secured, that sent its hello and got the welcome.
async fn welcomed(socket: WebSocketStream<DuplexStream>) -> SecureSocket<DuplexStream> {
    let mut client = secure_client(socket).await;
    send_client(&mut client, &ClientFrame::Hello(hello(&[]))).await;
    assert!(matches!(
        next_server(&mut client).await,
        Some(ServerFrame::Welcome(_))
    ));
    client
}

/// A scripted client's answer to a line read: `answer to PROMPT`.
fn answer_to_line_read(request: Request) -> ClientFrame {
    let Operation::StdinReadLine {
        prompt: Some(prompt),
    } = request.op
    else {
        panic!("unexpected operation {:?}", request.op);
    };
    let reply = Reply::Line {
        line: Some(format!("answer to {prompt}")),
    };
    ClientFrame::Response(Response::ok(request.id, reply))
}

/// Answers `n` line reads from a scripted client, one at a time.
async fn answer_line_reads(client: &mut impl Socket, n: usize) {
    for _ in 0..n {
        match next_server(client).await {
            Some(ServerFrame::Request(request)) => {
                send_client(client, &answer_to_line_read(request)).await;
            }
            other => panic!("expected a request, got {other:?}"),
        }
    }
}

/// Skips output until the exit frame; its status.
async fn until_exit(client: &mut impl Socket) -> u8 {
    loop {
        match next_server(client).await {
            Some(ServerFrame::Exit(exit)) => break exit.status,
            Some(ServerFrame::Data(_)) => {}
            other => panic!("expected exit, got {other:?}"),
        }
    }
}

/// Every frame before the exit, and the exit's status (the connection
/// must not close first).
async fn frames_until_exit(client: &mut impl Socket) -> (u8, Vec<ServerFrame>) {
    let mut frames = Vec::new();
    loop {
        match next_server(client).await {
            Some(ServerFrame::Exit(exit)) => return (exit.status, frames),
            Some(frame) => frames.push(frame),
            None => panic!("closed after {frames:?}"),
        }
    }
}

/// A Ctrl-C and a resize that arrive while the command is busy elsewhere
/// are told at its next `interrupted()` and `resized()`, not lost; once
/// told, they are not told again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signals_that_come_while_the_command_is_busy_are_not_lost() {
    use terminalwire_protocol::frame::{Signal, SignalKind};
    let terminal = Terminal::new(|ctx: Context| async move {
        ctx.handle_interrupts();
        // Busy: the client's signals arrive before this line's answer.
        ctx.read_line(Some("busy")).await?;
        let soon = Duration::from_secs(5);
        let interrupted = tokio::time::timeout(soon, ctx.interrupted()).await.is_ok();
        let resized = tokio::time::timeout(soon, ctx.resized())
            .await
            .ok()
            .flatten();
        let brief = Duration::from_millis(50);
        let again = tokio::time::timeout(brief, ctx.interrupted()).await.is_ok();
        let resized_again = tokio::time::timeout(brief, ctx.resized()).await.is_ok();
        ctx.stdout()
            .println(format!("{interrupted} {resized:?} {again} {resized_again}"))
            .await?;
        // Two waiters at once (the command and a helper of its) both hear
        // the next Ctrl-C: they wait before "waiting" is written.
        let (first, second, written) = future::join3(
            tokio::time::timeout(soon, ctx.interrupted()),
            tokio::time::timeout(soon, ctx.interrupted()),
            ctx.stdout().println("waiting"),
        )
        .await;
        written?;
        ctx.stdout()
            .println(format!("both: {}", first.is_ok() && second.is_ok()))
            .await?;
        anyhow::Ok(())
    });
    let (client, server) = socket_pair().await;
    let script = async {
        let mut client = welcomed(client).await;
        let Some(ServerFrame::Request(request)) = next_server(&mut client).await else {
            panic!("expected the line read");
        };
        let signal = |signal, size| ClientFrame::Signal(Signal { signal, size });
        send_client(&mut client, &signal(SignalKind::Interrupt, None)).await;
        let size = TerminalSize {
            cols: 100,
            rows: 40,
        };
        send_client(&mut client, &signal(SignalKind::Resize, Some(size))).await;
        send_client(&mut client, &answer_to_line_read(request)).await;
        let mut out = Vec::new();
        let mut told = false;
        loop {
            match next_server(&mut client).await {
                Some(ServerFrame::Exit(exit)) => break (exit.status, out),
                Some(ServerFrame::Data(data)) => out.extend_from_slice(&data.bytes),
                other => panic!("expected output, got {other:?}"),
            }
            if !told && out.ends_with(b"waiting\n") {
                told = true;
                send_client(&mut client, &signal(SignalKind::Interrupt, None)).await;
            }
        }
    };
    let (status, out) = serve_script(&terminal, server, script).await;
    assert_eq!(status, 0);
    assert_eq!(
        String::from_utf8(out).unwrap(),
        "true Some((100, 40)) false false\nwaiting\nboth: true\n"
    );
}

/// A Ctrl-C that comes once the command returned, while its error message
/// still waits for the client's credit (so before its exit leaves), has
/// nothing left to cancel: the command's message and status are what the
/// client gets, not 130 (the interrupt dropped the message being written and
/// sent 130 in its place).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_interrupt_after_the_command_returned_leaves_its_status() {
    use terminalwire_protocol::frame::{Signal, SignalKind};
    let returned = Arc::new(Notify::new());
    let told = returned.clone();
    let terminal = Terminal::new(move |ctx: Context| {
        let told = told.clone();
        async move {
            // All of stderr's window: the error message waits for credit.
            ctx.stderr().write_all(&[b'.'; 100]).await?;
            told.notify_one();
            Err::<(), _>(anyhow::anyhow!("too late"))
        }
    });
    let (client, server) = socket_pair().await;
    let script = async {
        let mut client = secure_client(client).await;
        let mut hello = hello(&[]);
        hello.window = 100;
        send_client(&mut client, &ClientFrame::Hello(hello)).await;
        assert!(matches!(
            next_server(&mut client).await,
            Some(ServerFrame::Welcome(_))
        ));
        // Told in the poll that returns from the command: the session reads
        // the interrupt after that poll, once the message waits for credit.
        returned.notified().await;
        let interrupt = Signal {
            signal: SignalKind::Interrupt,
            size: None,
        };
        send_client(&mut client, &ClientFrame::Signal(interrupt)).await;
        let grant = WindowAdjust {
            sid: StreamId::STDERR,
            bytes: 1 << 20,
        };
        send_client(&mut client, &ClientFrame::Window(grant)).await;
        let mut stderr = Vec::new();
        loop {
            match next_server(&mut client).await {
                Some(ServerFrame::Data(data)) => stderr.extend_from_slice(&data.bytes),
                Some(ServerFrame::Exit(exit)) => break (exit.status, stderr),
                other => panic!("unexpected {other:?}"),
            }
        }
    };
    let (status, stderr) = serve_script(&terminal, server, script).await;
    let stderr = String::from_utf8(stderr).unwrap();
    let message = stderr.trim_start_matches('.');
    assert_eq!((status, message), (1, "error: too late\n"));
}

/// With lingering on, each request polls for its answer instead of
/// sleeping; every answer still reaches its own request, once. (The
/// scripted client answers within the minute, so each answer is taken while
/// its request lingers: dropping that answer fails this test.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_that_linger_get_their_own_answers() {
    const N: usize = 50;
    let got = Arc::new(Mutex::new(Vec::new()));
    let got_in_command = got.clone();
    let terminal = lingering(move |ctx: Context| {
        let got = got_in_command.clone();
        async move {
            for i in 0..N {
                let line = ctx.read_line(Some(&format!("p{i}"))).await?;
                got.lock().unwrap().push(line);
            }
            anyhow::Ok(())
        }
    });
    let (client, server) = socket_pair().await;
    let script = async {
        let mut client = welcomed(client).await;
        answer_line_reads(&mut client, N).await;
        until_exit(&mut client).await
    };
    let status = serve_script(&terminal, server, script).await;
    assert_eq!(status, 0);
    let want: Vec<_> = (0..N).map(|i| Some(format!("answer to p{i}"))).collect();
    assert_eq!(*got.lock().unwrap(), want);
}

/// Both ends lingering for a minute after each round trip: the client
/// still answers every request, takes the exit at once, and the session
/// ends long before any minute is over.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lingering_client_answers_every_request_and_ends_with_the_command() {
    const N: usize = 200;
    let terminal = lingering(|ctx: Context| async move {
        let mut answered = 0;
        for _ in 0..N {
            // Refused (this client grants nothing), but answered.
            let answer = ctx.file().exists("/etc/hostname").await;
            if matches!(answer, Err(ResourceError::Denied { .. })) {
                answered += 1;
            }
        }
        ctx.stdout().println(format!("answered {answered}")).await?;
        anyhow::Ok(())
    });
    let mut session = Session::args(&[]);
    session.config.linger = Duration::from_secs(60);
    // `run` gives up after DEADLINE (10 s), long before a minute.
    let run = session.run(&terminal).await;
    assert_eq!(run.status(), 0, "stderr: {}", run.stderr_text());
    assert_eq!(run.stdout_text(), format!("answered {N}\n"));
}

/// A request lingering for its answer when the client goes away ends at
/// once (with an error, or cancelled with its command), not when its minute
/// of lingering is over.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lingering_request_ends_when_the_client_goes_away() {
    let (result_tx, result_rx) = tokio::sync::oneshot::channel();
    let result_tx = Arc::new(Mutex::new(Some(result_tx)));
    let terminal = lingering(move |ctx: Context| {
        let result_tx = result_tx.lock().unwrap().take();
        async move {
            ctx.read_line(Some("first")).await?;
            let second = ctx.read_line(Some("second")).await;
            if let Some(tx) = result_tx {
                let _ = tx.send(second.map_err(|error| error.to_string()));
            }
            anyhow::Ok(())
        }
    });
    let (client, server) = socket_pair().await;
    let script = async {
        let mut client = welcomed(client).await;
        answer_line_reads(&mut client, 1).await;
        // The second request arrives; the client goes away instead.
        assert!(matches!(
            next_server(&mut client).await,
            Some(ServerFrame::Request(_))
        ));
        drop(client);
    };
    // Gives up after DEADLINE (10 s), long before a minute.
    serve_script(&terminal, server, script).await;
    // Either the request failed, or the command was cancelled with the
    // session (its sender dropped): both end it.
    let second = tokio::time::timeout(DEADLINE, result_rx)
        .await
        .expect("the lingering request never ended");
    if let Ok(second) = second {
        assert!(
            second.is_err(),
            "an answer from a client that left: {second:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_line_prompts_on_stderr_strips_line_endings_and_ends_with_none() {
    let terminal = Terminal::new(|ctx: Context| async move {
        loop {
            match ctx.read_line(Some("name? ")).await? {
                Some(line) => ctx.stdout().println(format!("[{line}]")).await?,
                None => {
                    ctx.stdout().println("EOF").await?;
                    break;
                }
            }
        }
        anyhow::Ok(())
    });
    let run = Session::args(&[])
        .stdin(b"alpha\r\nbeta\n\r\nlast")
        .run(&terminal)
        .await;
    assert_eq!(run.status(), 0, "stderr: {}", run.stderr_text());
    assert_eq!(run.stdout_text(), "[alpha]\n[beta]\n[]\n[last]\nEOF\n");
    assert_eq!(run.stderr_text(), "name? ".repeat(5));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_incompatible_client_gets_the_servers_message_and_status() {
    let ran = Arc::new(AtomicUsize::new(0));
    let ran_in_command = ran.clone();
    let config = Config {
        incompatible_message: Some("please upgrade: https://example.test/get".into()),
        ..Config::default()
    };
    let terminal = Terminal::with_config(
        move |_ctx: Context| {
            ran_in_command.fetch_add(1, Ordering::SeqCst);
            async {}
        },
        config,
    );
    let mut hello = hello(&[]);
    hello.versions = VersionRange { min: 7, max: 9 };
    let run = Session::new(hello).run(&terminal).await;
    let error = run.error();
    assert!(
        matches!(error, ClientError::Incompatible { message, .. } if message == "please upgrade: https://example.test/get"),
        "{error:?}"
    );
    assert_eq!(error.exit_code(), exit_code::INCOMPATIBLE);
    let text = error.to_string();
    assert!(
        text.contains("please upgrade: https://example.test/get"),
        "{text}"
    );
    assert!(text.contains("versions 1"), "the server's versions: {text}");
    assert_eq!(ran.load(Ordering::SeqCst), 0, "the command must not run");

    // The default message names both sides' versions.
    let terminal = Terminal::new(|_ctx: Context| async {});
    let mut hello = self::hello(&[]);
    hello.versions = VersionRange { min: 7, max: 9 };
    let run = Session::new(hello).run(&terminal).await;
    let text = run.error().to_string();
    assert_eq!(run.error().exit_code(), exit_code::INCOMPATIBLE);
    assert!(text.contains("7..=9"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handler_errors_and_panics_exit_one_and_the_terminal_keeps_serving() {
    let terminal = multi_command();

    let run = Session::args(&["fail"]).run(&terminal).await;
    assert_eq!(run.status(), 1);
    assert_eq!(run.stderr_text(), "error: saving: disk full\n");
    assert_eq!(run.stdout_text(), "");

    let run = Session::args(&["panic"]).run(&terminal).await;
    assert_eq!(run.status(), 1);
    let stderr = run.stderr_text();
    assert!(stderr.starts_with("error: "), "{stderr}");
    assert!(stderr.contains("internal error"), "{stderr}");
    assert!(
        !stderr.contains("secret"),
        "panic details stay on the server: {stderr}"
    );

    let run = Session::args(&["ok"]).run(&terminal).await;
    assert_eq!(run.status(), 0);
    assert_eq!(run.stdout_text(), "fine\n");
    assert_eq!(run.stderr_text(), "");
    assert_eq!(terminal.session_count(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn non_zero_exit_statuses_propagate_after_the_output() {
    let terminal = multi_command();
    let run = Session::args(&["exit"]).run(&terminal).await;
    assert_eq!(run.status(), 42);
    assert_eq!(run.stdout_text(), "before exit\n");
    assert_eq!(run.stderr_text(), "");

    let run = Session::args(&["status"]).run(&terminal).await;
    assert_eq!(run.status(), 7);
    assert_eq!(run.stderr_text(), "warn");
}

/// Runs the client's side of the secure handshake (a fresh device key,
/// first contact), as the real client does before its hello.
async fn secure_client(socket: WebSocketStream<DuplexStream>) -> SecureSocket<DuplexStream> {
    let device = StaticKey::generate().unwrap();
    let (socket, _) = secure::handshake(
        socket,
        &device,
        &ServerPin::FirstContact,
        "duplex",
        Duration::from_secs(10),
    )
    .await
    .expect("the secure handshake");
    socket
}

async fn send_client(socket: &mut impl Socket, frame: &ClientFrame) {
    socket
        .send(Message::Binary(codec::encode(frame).into()))
        .await
        .unwrap();
}

async fn send_server(socket: &mut WebSocketStream<DuplexStream>, frame: &ServerFrame) {
    socket
        .send(Message::Binary(codec::encode(frame).into()))
        .await
        .unwrap();
}

/// The next server frame a scripted client receives; `None` at the end.
async fn next_server(socket: &mut impl Socket) -> Option<ServerFrame> {
    loop {
        match socket.next().await? {
            Ok(Message::Binary(bytes)) => return Some(codec::decode(&bytes).unwrap()),
            Ok(Message::Close(_)) | Err(_) => return None,
            Ok(_) => {}
        }
    }
}

/// The next client frame a scripted server receives; `None` at the end.
async fn next_client(socket: &mut WebSocketStream<DuplexStream>) -> Option<ClientFrame> {
    loop {
        match socket.next().await? {
            Ok(Message::Binary(bytes)) => return Some(codec::decode(&bytes).unwrap()),
            Ok(Message::Close(_)) | Err(_) => return None,
            Ok(_) => {}
        }
    }
}

fn welcome() -> ServerFrame {
    ServerFrame::Welcome(Welcome {
        version: 1,
        server: Software {
            name: "scripted".into(),
            version: "0".into(),
        },
        session_id: "s".into(),
        capabilities: Vec::new(),
        window: terminalwire_protocol::DEFAULT_WINDOW,
        max_chunk: terminalwire_protocol::DEFAULT_MAX_CHUNK,
        resume: None,
    })
}

const GARBAGE: &[&[u8]] = &[
    b"\xc1\xc1\xc1 not msgpack",
    &[0x93, 1, 2, 3],
    // A `data` frame without its fields.
    &[0x81, 0xa1, b't', 0xa4, b'd', b'a', b't', b'a'],
    &[],
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_sending_garbage_ends_the_client_with_a_protocol_error() {
    for &garbage in GARBAGE {
        for after_welcome in [false, true] {
            let (client_socket, mut server) = socket_pair().await;
            let script = async {
                let Some(ClientFrame::Hello(_)) = next_client(&mut server).await else {
                    panic!("expected hello");
                };
                if after_welcome {
                    send_server(&mut server, &welcome()).await;
                }
                server
                    .send(Message::Binary(garbage.to_vec().into()))
                    .await
                    .unwrap();
                // Collect what the client says until it goes.
                let mut frames = Vec::new();
                while let Some(frame) = next_client(&mut server).await {
                    frames.push(frame);
                }
                frames
            };
            let stdout = Capture::default();
            let io = LocalIo {
                stdout: Output::Async(Box::new(stdout.clone())),
                stderr: Output::Async(Box::new(Capture::default())),
                stdin: Box::new(tokio::io::empty()),
            };
            let config = SessionConfig::default();
            let client = session::run(client_socket, hello(&[]), io, &config);
            let (told, result) =
                tokio::time::timeout(DEADLINE, async { tokio::join!(script, client) })
                    .await
                    .expect("the client hung");
            let case = format!("garbage {garbage:x?}, after welcome: {after_welcome}");
            let error = result.expect_err(&case);
            assert!(
                matches!(error, ClientError::Protocol(_)),
                "{case}: {error:?}"
            );
            assert_eq!(error.exit_code(), exit_code::PROTOCOL, "{case}");
            assert!(stdout.take().is_empty(), "{case}");
            if after_welcome {
                // Mid-session, the client tells the server why it leaves.
                assert!(
                    told.iter().any(|frame| matches!(
                        frame,
                        ClientFrame::Error(error) if error.code == ErrorCode::Protocol
                    )),
                    "{case}: {told:?}"
                );
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_sending_garbage_is_told_and_the_terminal_keeps_serving() {
    let started = Arc::new(AtomicUsize::new(0));
    let started_in_command = started.clone();
    let terminal = Terminal::new(move |ctx: Context| {
        let started = started_in_command.clone();
        async move {
            started.fetch_add(1, Ordering::SeqCst);
            if ctx.args().first().map(String::as_str) == Some("wait") {
                // Would run forever unless the session ends it.
                ctx.closed().await;
            }
            ctx.stdout().println("fine").await
        }
    });
    for &garbage in GARBAGE {
        for as_hello in [true, false] {
            let case = format!("garbage {garbage:x?}, as hello: {as_hello}");
            let runs_before = started.load(Ordering::SeqCst);
            let (client, server) = socket_pair().await;
            let script = async {
                let mut client = secure_client(client).await;
                if !as_hello {
                    send_client(&mut client, &ClientFrame::Hello(hello(&["wait"]))).await;
                    assert!(
                        matches!(
                            next_server(&mut client).await,
                            Some(ServerFrame::Welcome(_))
                        ),
                        "{case}"
                    );
                }
                client
                    .send(Message::Binary(garbage.to_vec().into()))
                    .await
                    .unwrap();
                let mut frames = Vec::new();
                while let Some(frame) = next_server(&mut client).await {
                    frames.push(frame);
                }
                frames
            };
            let transport = WsTransport::plain(server);
            let (_, told) = tokio::time::timeout(DEADLINE, async {
                tokio::join!(terminal.serve(transport), script)
            })
            .await
            .unwrap_or_else(|_| panic!("{case}: the session hung"));
            assert!(
                matches!(
                    told.last(),
                    Some(ServerFrame::Error(error)) if error.code == ErrorCode::Protocol
                ),
                "{case}: {told:?}"
            );
            assert_eq!(terminal.session_count(), 0, "{case}");
            if as_hello {
                assert_eq!(
                    started.load(Ordering::SeqCst),
                    runs_before,
                    "{case}: the command ran"
                );
            }
        }
    }

    let run = Session::args(&["ok"]).run(&terminal).await;
    assert_eq!(run.status(), 0);
    assert_eq!(run.stdout_text(), "fine\n");
}

/// Runs a session of `terminal` and shuts the terminal down once its
/// command says it `started`: the client's run, the sessions there were
/// when the shutdown began, and whether every session ended.
async fn shut_down_once_started(terminal: &Terminal, started: &Notify) -> (Run, usize, bool) {
    let session = Session::args(&[]).run(terminal);
    let stop = async {
        started.notified().await;
        let sessions = terminal.session_count();
        (sessions, terminal.shutdown().await)
    };
    let (run, (sessions, all_ended)) =
        tokio::time::timeout(DEADLINE, async { tokio::join!(session, stop) })
            .await
            .expect("shutdown hung");
    (run, sessions, all_ended)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_shutdown_tells_running_commands_and_they_finish() {
    let started = Arc::new(Notify::new());
    let started_in_command = started.clone();
    let terminal = Terminal::new(move |ctx: Context| {
        let started = started_in_command.clone();
        async move {
            ctx.stdout().println("working").await?;
            started.notify_one();
            ctx.shutdown_requested().await;
            ctx.stdout().println("saving and leaving").await?;
            Err::<(), anyhow::Error>(Exit(3).into())
        }
    });
    let (run, sessions, all_ended) = shut_down_once_started(&terminal, &started).await;
    assert_eq!(sessions, 1);
    assert!(all_ended, "shutdown() reports every session ended");
    assert_eq!(run.status(), 3);
    assert_eq!(run.stdout_text(), "working\nsaving and leaving\n");
    assert_eq!(terminal.session_count(), 0);
}

/// A connection still in its handshake when the shutdown begins is closed.
/// It watched nothing: a client that said hello just before the handshake
/// time-out (and then read nothing) started a session whose grace period
/// began only then, and `shutdown` gave up at its bound (grace + 6 s)
/// with the session still running. On tokio's paused clock.
#[tokio::test(start_paused = true)]
async fn a_connection_in_its_handshake_does_not_hold_up_the_shutdown() {
    let terminal = Terminal::new(|ctx: Context| async move {
        ctx.stdout().println("ignoring the shutdown").await?;
        std::future::pending::<()>().await;
        anyhow::Ok(())
    });
    let (client, server) = socket_pair_buffered(1 << 16).await;
    let connected = tokio::time::Instant::now();
    let serving = tokio::spawn(terminal.serve(WsTransport::plain(server)));
    let mut client = secure_client(client).await;
    terminal.begin_shutdown();
    let hello_late = async {
        let late = terminal.config().handshake_timeout - Duration::from_millis(100);
        tokio::time::sleep_until(connected + late).await;
        // Closed at once with the fix: the send fails then.
        let frame = Message::Binary(codec::encode(&ClientFrame::Hello(hello(&[]))).into());
        let _ = client.send(frame).await;
    };
    let (all_ended, ()) = tokio::join!(terminal.shutdown(), hello_late);
    assert!(all_ended, "a session outlived the shutdown's bound");
    assert_eq!(terminal.session_count(), 0);
    serving.await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn times_set_to_forever_and_a_zero_chunk_still_serve_and_shut_down() {
    let started = Arc::new(Notify::new());
    let started_in_command = started.clone();
    let config = Config {
        handshake_timeout: Duration::MAX,
        idle_timeout: Duration::MAX,
        shutdown_grace: Duration::MAX,
        resume_grace: Duration::MAX,
        detach_keep: Duration::MAX,
        linger: Duration::MAX,
        max_chunk: 0,
        ..Config::default()
    };
    let terminal = Terminal::with_config(
        move |ctx: Context| {
            let started = started_in_command.clone();
            async move {
                ctx.stdout().write_all(&[b'x'; 5000]).await?;
                started.notify_one();
                ctx.shutdown_requested().await;
                anyhow::Ok(())
            }
        },
        config,
    );
    assert_eq!(terminal.config().shutdown_grace, Config::FOREVER);
    assert_eq!(terminal.config().max_chunk, Config::MIN_CHUNK);
    let (run, _, all_ended) = shut_down_once_started(&terminal, &started).await;
    assert!(all_ended);
    assert_eq!(run.status(), 0);
    assert_eq!(run.stdout_text(), "x".repeat(5000));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_command_ignoring_shutdown_is_cancelled_after_the_grace_period() {
    let started = Arc::new(Notify::new());
    let started_in_command = started.clone();
    let config = Config {
        shutdown_grace: Duration::from_millis(200),
        ..Config::default()
    };
    let terminal = Terminal::with_config(
        move |ctx: Context| {
            let started = started_in_command.clone();
            async move {
                ctx.stdout().println("working").await?;
                started.notify_one();
                std::future::pending::<()>().await;
                anyhow::Ok(())
            }
        },
        config,
    );
    let (run, _, all_ended) = shut_down_once_started(&terminal, &started).await;
    assert!(all_ended);
    let error = run.error();
    assert!(matches!(error, ClientError::ServerShutdown(_)), "{error:?}");
    assert_eq!(error.exit_code(), exit_code::CONNECTION_LOST);
    assert!(error.to_string().contains("shutting down"), "{error}");
    // Output written before the cancellation is still delivered.
    assert_eq!(run.stdout_text(), "working\n");
}

/// Client settings for the liveness tests (on tokio's paused clock).
fn quick_heartbeats() -> SessionConfig {
    SessionConfig {
        idle_timeout: Duration::from_secs(1),
        heartbeat: Duration::from_millis(200),
        ..SessionConfig::default()
    }
}

/// A command that prints nothing for longer than the client's idle time-out
/// keeps its session: the server's pongs to the client's pings are signs of life.
#[tokio::test(start_paused = true)]
async fn a_quiet_command_outlives_the_idle_timeout_thanks_to_heartbeats() {
    outlives_five_quiet_seconds(Config::default()).await;
}

/// Runs a command that is quiet for five seconds (virtual time: five of the
/// client's idle time-outs with [`quick_heartbeats`]) on a server with
/// `config`, then prints: the session must live to see it.
async fn outlives_five_quiet_seconds(config: Config) {
    let terminal = Terminal::with_config(
        |ctx: Context| async move {
            tokio::time::sleep(Duration::from_secs(5)).await;
            ctx.stdout().println("still here").await
        },
        config,
    );
    let mut session = Session::args(&[]);
    session.config = quick_heartbeats();
    let run = session.run(&terminal).await;
    assert_eq!(run.status(), 0);
    assert_eq!(run.stdout_text(), "still here\n");
}

/// A server that stops reading (so it answers no ping) and sends nothing is
/// given up on after the idle time-out.
#[tokio::test(start_paused = true)]
async fn a_silent_server_is_a_lost_connection_after_the_idle_timeout() {
    let (client_socket, mut server) = socket_pair().await;
    let done = Notify::new();
    let script = async {
        let Some(ClientFrame::Hello(_)) = next_client(&mut server).await else {
            panic!("expected hello");
        };
        send_server(&mut server, &welcome()).await;
        // Hold the connection open, unread, until the client has given up.
        done.notified().await;
    };
    let io = LocalIo {
        stdout: Output::Async(Box::new(Capture::default())),
        stderr: Output::Async(Box::new(Capture::default())),
        stdin: Box::new(tokio::io::empty()),
    };
    let config = quick_heartbeats();
    let client = async {
        let result = session::run(client_socket, hello(&[]), io, &config).await;
        done.notify_one();
        result
    };
    let started = tokio::time::Instant::now();
    let ((), result) = tokio::time::timeout(DEADLINE, async { tokio::join!(script, client) })
        .await
        .expect("the client hung");
    let error = result.expect_err("a silent server is an error");
    assert!(matches!(error, ClientError::ConnectionLost(_)), "{error:?}");
    assert_eq!(error.exit_code(), exit_code::CONNECTION_LOST);
    assert!(error.to_string().contains("no sign of life"), "{error}");
    assert!(started.elapsed() >= config.idle_timeout);
}

/// The server's side of liveness: a session whose client keeps sending
/// heartbeats outlives the server's idle time-out many times over (the
/// idle deadline moves up to the last sign of life when it passes).
#[tokio::test(start_paused = true)]
async fn a_client_sending_heartbeats_outlives_the_servers_idle_timeout() {
    outlives_five_quiet_seconds(Config {
        idle_timeout: Duration::from_secs(1),
        ..Config::default()
    })
    .await;
}

/// A client that says hello and then nothing (no frame, no heartbeat) is
/// given up on after the server's idle time-out: the session ends and its
/// command is cancelled.
#[tokio::test(start_paused = true)]
async fn a_silent_client_is_dropped_after_the_servers_idle_timeout() {
    let (dropped_tx, dropped) = tokio::sync::oneshot::channel();
    let dropped_tx = Arc::new(Mutex::new(Some(dropped_tx)));
    let config = Config {
        idle_timeout: Duration::from_secs(1),
        ..Config::default()
    };
    let terminal = Terminal::with_config(
        move |_ctx: Context| {
            let guard = DropSignal(dropped_tx.lock().unwrap().take());
            async move {
                let _guard = guard;
                std::future::pending::<()>().await;
                anyhow::Ok(())
            }
        },
        config,
    );
    let (client_socket, server_socket) = socket_pair().await;
    let transport = WsTransport::plain(server_socket);
    let client = async {
        let mut socket = secure_client(client_socket).await;
        send_client(&mut socket, &ClientFrame::Hello(hello(&[]))).await;
        // Read what comes, say nothing, until the server closes.
        while next_server(&mut socket).await.is_some() {}
    };
    let started = tokio::time::Instant::now();
    tokio::time::timeout(DEADLINE, async {
        tokio::join!(terminal.serve(transport), client)
    })
    .await
    .expect("the server kept a silent client");
    assert!(started.elapsed() >= Duration::from_secs(1));
    dropped.await.expect("the command's future was dropped");
    assert_eq!(terminal.session_count(), 0);
}

/// Signals when dropped: the command's future was cancelled (or finished).
struct DropSignal(Option<tokio::sync::oneshot::Sender<()>>);

impl Drop for DropSignal {
    fn drop(&mut self) {
        if let Some(tx) = self.0.take() {
            let _ = tx.send(());
        }
    }
}

/// When the client goes away (here: its stdout reader closed), the server
/// ends the session and cancels the command.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_goes_away_cancels_the_command() {
    let (dropped_tx, dropped) = tokio::sync::oneshot::channel();
    let dropped_tx = Arc::new(Mutex::new(Some(dropped_tx)));
    let tx_in_command = dropped_tx.clone();
    let terminal = Terminal::new(move |ctx: Context| {
        let guard = DropSignal(tx_in_command.lock().unwrap().take());
        async move {
            let _guard = guard;
            ctx.stdout().println("one line").await?;
            // Never finishes by itself.
            std::future::pending::<()>().await;
            anyhow::Ok(())
        }
    });
    let mut session = Session::args(&[]);
    session.stdout.broken = true;
    let run = session.run(&terminal).await;
    let error = run.error();
    assert!(matches!(error, ClientError::BrokenPipe), "{error:?}");
    assert_eq!(error.exit_code(), exit_code::BROKEN_PIPE);
    tokio::time::timeout(DEADLINE, dropped)
        .await
        .expect("the command was not cancelled")
        .expect("the command's future was dropped");
    assert_eq!(terminal.session_count(), 0);
}

/// A scripted server that answers the real client's hello after `delay`
/// (so the client measures a round trip of at least that), then streams
/// 8 MiB of stdout as fast as its credit allows, into a file when
/// `into_file` (the client writes it at once) and into an in-memory writer
/// otherwise (queued for a writer task). Returns the largest `window` grant
/// it received, and the client's announced window.
async fn largest_grant_for_a_stream(delay: Duration, into_file: bool) -> (u32, u32) {
    const TOTAL: usize = 8 << 20;
    let (client_socket, server) = socket_pair_buffered(1 << 16).await;
    let (mut sink, mut stream) = server.split();
    let script = async move {
        let Some(Ok(Message::Binary(bytes))) = stream.next().await else {
            panic!("expected hello");
        };
        let Ok(ClientFrame::Hello(hello)) = codec::decode(&bytes) else {
            panic!("expected hello");
        };
        tokio::time::sleep(delay).await;
        let welcome = Message::Binary(codec::encode(&welcome()).into());
        sink.send(welcome).await.unwrap();
        let (grants_tx, mut grants) = tokio::sync::mpsc::unbounded_channel();
        let reader = async move {
            while let Some(Ok(message)) = stream.next().await {
                if let Message::Binary(bytes) = message
                    && let Ok(ClientFrame::Window(grant)) = codec::decode(&bytes)
                {
                    let _ = grants_tx.send(grant.bytes);
                }
            }
        };
        let writer = async move {
            let mut credit = u64::from(hello.window);
            let (mut sent, mut largest) = (0usize, 0u32);
            let chunk = pattern(64 << 10, 5);
            while sent < TOTAL {
                while credit == 0 || !grants.is_empty() {
                    let grant = grants.recv().await.expect("the client went away");
                    largest = largest.max(grant);
                    credit += u64::from(grant);
                }
                let n = chunk.len().min(TOTAL - sent).min(credit as usize);
                let data = ServerFrame::Data(terminalwire_protocol::frame::Data {
                    sid: StreamId::STDOUT,
                    bytes: serde_bytes::ByteBuf::from(&chunk[..n]),
                });
                send_frame(&mut sink, &data).await;
                (sent, credit) = (sent + n, credit - n as u64);
            }
            let exit = ServerFrame::Exit(terminalwire_protocol::frame::Exit { status: 0 });
            send_frame(&mut sink, &exit).await;
            (largest, hello.window)
        };
        tokio::join!(reader, writer).1
    };
    let stdout = Capture::default();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("stdout");
    let io = LocalIo {
        stdout: if into_file {
            Output::File(std::fs::File::create(&path).unwrap())
        } else {
            Output::Async(Box::new(stdout.clone()))
        },
        stderr: Output::Async(Box::new(Capture::default())),
        stdin: Box::new(tokio::io::empty()),
    };
    let config = SessionConfig::default();
    let client = session::run(client_socket, hello(&[]), io, &config);
    let (grants, status) =
        tokio::time::timeout(BULK_DEADLINE, async { tokio::join!(script, client) })
            .await
            .expect("the session hung");
    assert_eq!(status.unwrap(), 0);
    let written = if into_file {
        std::fs::read(&path).unwrap()
    } else {
        stdout.take()
    };
    assert_eq!(written, pattern(64 << 10, 5).repeat(TOTAL / (64 << 10)));
    grants
}

async fn send_frame<S>(sink: &mut S, frame: &ServerFrame)
where
    S: futures_util::Sink<Message> + Unpin,
    S::Error: std::fmt::Debug,
{
    sink.send(Message::Binary(codec::encode(frame).into()))
        .await
        .unwrap();
}

/// Far from its server (100 ms from hello to welcome), the client grows
/// the window of an output it writes at once when half of it drains in
/// less than a round trip: a grant then carries the growth too, more than
/// a whole window. The window of an output that queues (a pipe, a
/// terminal) does not grow: its grants give back what was consumed, about
/// half a window each. (Near, with a round trip under
/// `flow::MIN_GROWTH_RTT`, no window grows: `protocol/src/flow.rs` tests
/// that rule; a debug build's hello can take longer than that in process.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_client_grows_the_window_of_a_file_for_a_far_server() {
    let far = Duration::from_millis(100);
    let (largest, window) = largest_grant_for_a_stream(far, true).await;
    assert!(
        largest > window,
        "file: largest grant {largest} with a window of {window}"
    );
    let (largest, window) = largest_grant_for_a_stream(far, false).await;
    assert!(
        largest <= window,
        "queued: largest grant {largest} with a window of {window}"
    );
}

// ---------------------------------------------------------------------------
// Ends, slots and credit
// ---------------------------------------------------------------------------

/// The hello of a client that asks for a resumable session.
fn resumable_hello() -> Hello {
    let mut hello = hello(&[]);
    hello.capabilities.push(resume::CAPABILITY.into());
    hello
}

/// A scripted client that opened a resumable session.
async fn welcomed_resumable(socket: WebSocketStream<DuplexStream>) -> SecureSocket<DuplexStream> {
    let mut client = secure_client(socket).await;
    send_client(&mut client, &ClientFrame::Hello(resumable_hello())).await;
    match next_server(&mut client).await {
        Some(ServerFrame::Welcome(welcome)) => assert!(welcome.resume.is_some(), "not resumable"),
        other => panic!("expected welcome, got {other:?}"),
    }
    client
}

/// Every frame the server sends until it closes.
async fn rest_of_session(client: &mut impl Socket) -> Vec<ServerFrame> {
    let mut frames = Vec::new();
    while let Some(frame) = next_server(client).await {
        frames.push(frame);
    }
    frames
}

/// A resumable session that ends on the client's violation, or on the end
/// of the shutdown grace period, writes its `error` frame before it closes.
/// (The end queued the error and then the close, and the close abandoned
/// the error's write: over this tiny pipe the client saw a bare close nearly
/// every time, and a real client would have tried to resume.) Several
/// sessions each, since the loss depended on the writer's unbiased select.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resumable_session_always_sends_its_final_error_frame() {
    const SESSIONS: usize = 8;
    let waiting = |started: Arc<Notify>| {
        move |ctx: Context| {
            let started = started.clone();
            async move {
                started.notify_one();
                // Runs until the session ends it.
                ctx.closed().await;
                anyhow::Ok(())
            }
        }
    };
    let mut lost = Vec::new();
    for session in 0..SESSIONS {
        let terminal = Terminal::new(waiting(Arc::new(Notify::new())));
        let (client, server) = socket_pair().await;
        let script = async {
            let mut client = welcomed_resumable(client).await;
            client
                .send(Message::Binary(b"\xc1 not msgpack".to_vec().into()))
                .await
                .unwrap();
            rest_of_session(&mut client).await
        };
        let told = serve_script(&terminal, server, script).await;
        if !matches!(told.last(), Some(ServerFrame::Error(error)) if error.code == ErrorCode::Protocol)
        {
            lost.push(format!("violation {session}: {told:?}"));
        }

        let started = Arc::new(Notify::new());
        let terminal = Terminal::with_config(
            waiting(started.clone()),
            Config {
                shutdown_grace: Duration::from_millis(20),
                ..Config::default()
            },
        );
        let (client, server) = socket_pair().await;
        let script = async {
            let mut client = welcomed_resumable(client).await;
            started.notified().await;
            terminal.begin_shutdown();
            rest_of_session(&mut client).await
        };
        let told = serve_script(&terminal, server, script).await;
        if !matches!(told.last(), Some(ServerFrame::Error(error)) if error.code == ErrorCode::Shutdown)
        {
            lost.push(format!("shutdown {session}: {told:?}"));
        }
    }
    assert!(lost.is_empty(), "final error frames lost: {lost:#?}");
}

/// Fills the server's queue of outgoing frames: the scripted client reads
/// nothing, and stderr (window 1 MiB in chunks of 1 KiB) writes until the
/// write stays blocked. True when it did block: the queue was full then,
/// and stays full until the client reads.
async fn fill_the_outgoing_queue(ctx: &Context) -> bool {
    let filler = vec![b'e'; 1 << 20];
    tokio::time::timeout(Duration::from_millis(200), ctx.stderr().write_all(&filler))
        .await
        .is_err()
}

/// A hello with a 1 MiB window per stream and 1 KiB chunks.
fn small_chunks_hello() -> Hello {
    let mut hello = hello(&[]);
    hello.window = 1 << 20;
    hello.max_chunk = 1024;
    hello
}

/// A scripted client that reads nothing until `go`, then answers line
/// reads and collects stdout until the exit: (status, stdout).
async fn read_after(
    socket: WebSocketStream<DuplexStream>,
    hello: Hello,
    go: &Notify,
) -> (u8, Vec<u8>) {
    let mut client = secure_client(socket).await;
    send_client(&mut client, &ClientFrame::Hello(hello)).await;
    assert!(matches!(
        next_server(&mut client).await,
        Some(ServerFrame::Welcome(_))
    ));
    go.notified().await;
    let mut stdout = Vec::new();
    loop {
        match next_server(&mut client).await {
            Some(ServerFrame::Request(request)) => {
                send_client(&mut client, &answer_to_line_read(request)).await;
            }
            Some(ServerFrame::Data(data)) if data.sid == StreamId::STDOUT => {
                stdout.extend_from_slice(&data.bytes);
            }
            Some(ServerFrame::Data(_)) => {}
            Some(ServerFrame::Exit(exit)) => return (exit.status, stdout),
            other => panic!("unexpected {other:?}"),
        }
    }
}

/// Starts `attempts` operations, polls each once and drops it; how many were
/// still waiting (for room in the outgoing queue) when dropped.
async fn give_up<F: Future>(attempts: usize, mut start: impl FnMut() -> F) -> usize {
    let mut given_up = 0;
    for _ in 0..attempts {
        if start().now_or_never().is_none() {
            given_up += 1;
        }
        // A fresh task budget for the next (tokio's cooperative budget would
        // refuse it before it got anywhere).
        tokio::task::yield_now().await;
    }
    given_up
}

/// Requests given up while the outgoing queue is full (never sent) give
/// back their slot: after twice as many as may be in flight, a request still
/// gets its answer. (Each one kept its slot, held for an answer that could
/// never come: after 64, every request waited forever.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_given_up_before_they_are_sent_keep_no_slot() {
    let go = Arc::new(Notify::new());
    let go_in_command = go.clone();
    let terminal = Terminal::new(move |ctx: Context| {
        let go = go_in_command.clone();
        async move {
            let full = fill_the_outgoing_queue(&ctx).await;
            let given_up = give_up(2 * terminalwire_protocol::MAX_REQUESTS_IN_FLIGHT, || {
                ctx.read_line(Some("lost"))
            })
            .await;
            go.notify_one();
            let last =
                tokio::time::timeout(Duration::from_secs(3), ctx.read_line(Some("last"))).await;
            ctx.stdout()
                .println(format!("full {full}, given up {given_up}, last {last:?}"))
                .await?;
            anyhow::Ok(())
        }
    });
    let (client, server) = socket_pair().await;
    let (status, stdout) = serve_script(
        &terminal,
        server,
        read_after(client, small_chunks_hello(), &go),
    )
    .await;
    assert_eq!(status, 0);
    assert_eq!(
        String::from_utf8_lossy(&stdout),
        "full true, given up 128, last Ok(Ok(Some(\"answer to last\")))\n"
    );
}

/// Writes given up while the outgoing queue is full (nothing sent) give
/// back their credit: after two windows' worth of them, stdout still
/// writes. (Each one kept the credit of the chunk it never sent, which the
/// client never grants back: stdout hung for good.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_given_up_before_they_are_sent_keep_no_credit() {
    let go = Arc::new(Notify::new());
    let report = Arc::new(Mutex::new(String::new()));
    let (go_in_command, report_in_command) = (go.clone(), report.clone());
    let terminal = Terminal::new(move |ctx: Context| {
        let (go, report) = (go_in_command.clone(), report_in_command.clone());
        async move {
            let full = fill_the_outgoing_queue(&ctx).await;
            let chunk = [b'o'; 1024];
            let given_up = give_up(2048, || {
                let stdout = ctx.stdout();
                async move { stdout.write_all(&chunk).await }
            })
            .await;
            go.notify_one();
            let last =
                tokio::time::timeout(Duration::from_secs(3), ctx.stdout().print("done")).await;
            *report.lock().unwrap() = format!("full {full}, given up {given_up}, last {last:?}");
            anyhow::Ok(())
        }
    });
    let (client, server) = socket_pair().await;
    let (status, stdout) = serve_script(
        &terminal,
        server,
        read_after(client, small_chunks_hello(), &go),
    )
    .await;
    assert_eq!(status, 0);
    assert_eq!(
        *report.lock().unwrap(),
        "full true, given up 2048, last Ok(Ok(()))"
    );
    assert_eq!(String::from_utf8_lossy(&stdout), "done");
}

/// A scripted client that answers every read with one byte more than
/// asked, and every other request with an empty `data`; the exit status.
async fn answer_reads_with_too_much(client: &mut impl Socket) -> u8 {
    loop {
        match next_server(client).await {
            Some(ServerFrame::Request(request)) => {
                let len = match request.op {
                    Operation::FileRead { len, .. } => len as usize + 1,
                    Operation::StdinRead { max } => max as usize + 1,
                    _ => 0,
                };
                let reply = Reply::Data {
                    bytes: vec![b'x'; len].into(),
                    eof: false,
                };
                send_client(
                    client,
                    &ClientFrame::Response(Response::ok(request.id, reply)),
                )
                .await;
            }
            Some(ServerFrame::Data(_)) => {}
            Some(ServerFrame::Exit(exit)) => return exit.status,
            other => panic!("unexpected {other:?}"),
        }
    }
}

/// What a [`FileWriter`](terminalwire_server::FileWriter) is given up in.
#[derive(Debug, Clone, Copy, PartialEq)]
enum GivenUp {
    /// `Files::writer`, once its request left.
    Open,
    /// `commit`, waiting for a request slot.
    Commit,
    /// `abort`, waiting for a request slot.
    Abort,
}

/// Plays a client with one streamed write (handle 7). For
/// [`GivenUp::Open`], it holds the open's answer: tells `held` once it has
/// the open, and answers it once `given_up`. Else it leaves no request slot
/// free once the write is open: it holds [`MAX_REQUESTS_IN_FLIGHT`] line
/// reads unanswered, tells `held`, and answers them once `given_up`.
/// Records what becomes of the write (`commit`, `abort`), telling
/// `finished` at the first; the exit status and the command's output.
///
/// [`MAX_REQUESTS_IN_FLIGHT`]: terminalwire_protocol::MAX_REQUESTS_IN_FLIGHT
async fn holding_a_write(
    socket: WebSocketStream<DuplexStream>,
    given_up_in: GivenUp,
    held: &Notify,
    given_up: &Notify,
    finished: &Notify,
) -> (u8, String, Vec<&'static str>) {
    const HANDLE: u64 = 7;
    let mut client = welcomed(socket).await;
    let mut reads = Vec::new();
    let mut became = Vec::new();
    let mut stderr = Vec::new();
    loop {
        let request = match next_server(&mut client).await {
            Some(ServerFrame::Request(request)) => request,
            Some(ServerFrame::Data(data)) => {
                stderr.extend_from_slice(&data.bytes);
                continue;
            }
            Some(ServerFrame::Exit(exit)) => {
                return (exit.status, String::from_utf8(stderr).unwrap(), became);
            }
            other => panic!("unexpected {other:?}"),
        };
        let reply = match request.op {
            Operation::StdinReadLine { .. } => {
                reads.push(request.id);
                if reads.len() == terminalwire_protocol::MAX_REQUESTS_IN_FLIGHT {
                    held.notify_one();
                    given_up.notified().await;
                    for id in reads.drain(..) {
                        let line = Reply::Line { line: None };
                        let answer = ClientFrame::Response(Response::ok(id, line));
                        send_client(&mut client, &answer).await;
                    }
                }
                continue;
            }
            Operation::FileWriteOpen { .. } => {
                if given_up_in == GivenUp::Open {
                    held.notify_one();
                    given_up.notified().await;
                }
                Reply::Handle { handle: HANDLE }
            }
            Operation::FileWriteChunk { handle: HANDLE, .. } => Reply::Unit,
            Operation::FileWriteCommit { handle: HANDLE } => {
                became.push("commit");
                finished.notify_one();
                Reply::Unit
            }
            Operation::FileWriteAbort { handle: HANDLE } => {
                became.push("abort");
                finished.notify_one();
                Reply::Unit
            }
            other => panic!("unexpected {other:?}"),
        };
        let answer = ClientFrame::Response(Response::ok(request.id, reply));
        send_client(&mut client, &answer).await;
    }
}

/// The command of [`a_streamed_write_given_up_unfinished_is_abandoned`]:
/// opens a write and gives it up in `given_up_in`, then waits (a bounded
/// time) for the client to be told what became of it.
async fn give_up_a_write(
    ctx: Context,
    given_up_in: GivenUp,
    held: Arc<Notify>,
    given_up: Arc<Notify>,
    finished: Arc<Notify>,
) -> anyhow::Result<()> {
    if given_up_in == GivenUp::Open {
        let files = ctx.file();
        let mut open = std::pin::pin!(files.writer("f"));
        tokio::select! {
            _ = &mut open => anyhow::bail!("the open was answered"),
            () = held.notified() => {}
        }
    } else {
        let mut writer = ctx.file().writer("f").await?;
        writer.write(b"unfinished").await?;
        // Every chunk answered: what is left is the request itself.
        tokio::io::AsyncWriteExt::flush(&mut writer).await?;
        let reads = tokio::spawn({
            let ctx = ctx.clone();
            async move {
                let reads = (0..terminalwire_protocol::MAX_REQUESTS_IN_FLIGHT)
                    .map(|_| ctx.read_line(Some("hold")));
                future::join_all(reads).await
            }
        });
        held.notified().await;
        let waited = if given_up_in == GivenUp::Commit {
            writer.commit().now_or_never().is_none()
        } else {
            writer.abort().now_or_never().is_none()
        };
        anyhow::ensure!(waited, "the request found a slot");
        given_up.notify_one();
        reads.await?;
    }
    given_up.notify_one();
    let told = tokio::time::timeout(DEADLINE / 2, finished.notified()).await;
    anyhow::ensure!(told.is_ok(), "the client was never told");
    Ok(())
}

/// A streamed write given up unfinished (its open once the request left,
/// its `commit` or `abort` before theirs could leave, every request slot
/// being taken) is abandoned: the client is told to drop it, and its
/// temporary file, while the session goes on. (Nothing was sent: the writer
/// had let go of the write before the commit or abort left, and an open
/// given up never learnt the handle; the client kept the file until the
/// session ended.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_streamed_write_given_up_unfinished_is_abandoned() {
    for given_up_in in [GivenUp::Open, GivenUp::Commit, GivenUp::Abort] {
        let held = Arc::new(Notify::new());
        let given_up = Arc::new(Notify::new());
        let finished = Arc::new(Notify::new());
        let notifies = (held.clone(), given_up.clone(), finished.clone());
        let terminal = Terminal::new(move |ctx: Context| {
            let (held, given_up, finished) = notifies.clone();
            give_up_a_write(ctx, given_up_in, held, given_up, finished)
        });
        let (client, server) = socket_pair().await;
        let script = holding_a_write(client, given_up_in, &held, &given_up, &finished);
        let (status, stderr, became) = serve_script(&terminal, server, script).await;
        assert_eq!(
            (status, stderr.as_str(), became),
            (0, "", vec!["abort"]),
            "given up in {given_up_in:?}"
        );
    }
}

/// A client that answers a read with more bytes than were asked for is
/// refused (`TooLarge`), by every kind of read: the bytes are not the
/// app's to keep, and a whole-file read would otherwise gather them (up to
/// 256 MiB) without bound per request. (All four took the bytes before.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_answered_with_more_than_asked_are_refused() {
    let got = Arc::new(Mutex::new(Vec::new()));
    let got_in_command = got.clone();
    let terminal = Terminal::new(move |ctx: Context| {
        let got = got_in_command.clone();
        async move {
            let files = ctx.file();
            let results = [
                files
                    .read_range("f", 0, 10)
                    .await
                    .map(|(bytes, _)| bytes.len()),
                files.read("f").await.map(|bytes| bytes.len()),
                files
                    .reader("f")
                    .next_chunk()
                    .await
                    .map(|chunk| chunk.map_or(0, |chunk| chunk.len())),
                ctx.stdin().read_chunk(10).await.map(|bytes| bytes.len()),
            ];
            *got.lock().unwrap() = results.to_vec();
            anyhow::Ok(())
        }
    });
    let (client, server) = socket_pair().await;
    let script = async {
        let mut client = welcomed(client).await;
        answer_reads_with_too_much(&mut client).await
    };
    let status = serve_script(&terminal, server, script).await;
    assert_eq!(status, 0);
    let got = got.lock().unwrap();
    assert_eq!(got.len(), 4);
    for (read, result) in ["read_range", "read", "reader", "read_chunk"]
        .iter()
        .zip(&*got)
    {
        assert!(
            matches!(result, Err(ResourceError::TooLarge { .. })),
            "{read}: {result:?}"
        );
    }
}

/// `read_limited` takes a file of up to its limit and refuses a longer
/// one, asking for no more than one byte beyond the limit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_limited_refuses_a_file_over_its_limit() {
    const FILE: &[u8] = b"12345678";
    let got = Arc::new(Mutex::new(Vec::new()));
    let got_in_command = got.clone();
    let terminal = Terminal::new(move |ctx: Context| {
        let got = got_in_command.clone();
        async move {
            let files = ctx.file();
            let results = vec![
                files.read_limited("f", 8).await,
                files.read_limited("f", 7).await,
                files.read_limited("f", 0).await,
            ];
            *got.lock().unwrap() = results;
            anyhow::Ok(())
        }
    });
    let (client, server) = socket_pair().await;
    let script = async {
        let mut client = welcomed(client).await;
        let mut largest_ask = 0;
        loop {
            match next_server(&mut client).await {
                Some(ServerFrame::Request(request)) => {
                    let Operation::FileRead { offset, len, .. } = request.op else {
                        panic!("unexpected {:?}", request.op);
                    };
                    largest_ask = largest_ask.max(len);
                    let start = (offset as usize).min(FILE.len());
                    let end = (start + len as usize).min(FILE.len());
                    let reply = Reply::Data {
                        bytes: FILE[start..end].to_vec().into(),
                        eof: end == FILE.len(),
                    };
                    let answer = ClientFrame::Response(Response::ok(request.id, reply));
                    send_client(&mut client, &answer).await;
                }
                Some(ServerFrame::Exit(exit)) => break (exit.status, largest_ask),
                other => panic!("unexpected {other:?}"),
            }
        }
    };
    let (status, largest_ask) = serve_script(&terminal, server, script).await;
    assert_eq!(status, 0);
    assert_eq!(largest_ask, 9);
    let got = got.lock().unwrap();
    assert_eq!(got[0], Ok(FILE.to_vec()));
    assert!(
        matches!(got[1], Err(ResourceError::TooLarge { .. })),
        "{:?}",
        got[1]
    );
    assert!(
        matches!(got[2], Err(ResourceError::TooLarge { .. })),
        "{:?}",
        got[2]
    );
}

/// A client may answer a read with fewer bytes than asked and no end of
/// file (to stay under its own frame limit). The reader asks for the rest
/// before going on, so the file comes back whole. (It went on at the next
/// chunk's offset, and the file came back with holes.)
///
/// The same through `AsyncRead`: a few bytes with `read_exact`, the rest of
/// their chunk with `next_chunk`, then `read_to_end`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reader_asks_again_for_what_a_short_answer_left_out() {
    for through_async_read in [false, true] {
        reads_the_whole_file_from_short_answers(through_async_read).await;
    }
}

async fn reads_the_whole_file_from_short_answers(through_async_read: bool) {
    use tokio::io::AsyncReadExt;
    const SHORT: usize = 100_000;
    let file = pattern(1_300_000, 5);
    let got = Arc::new(Mutex::new(Vec::new()));
    let got_in_command = got.clone();
    let terminal = Terminal::new(move |ctx: Context| {
        let got = got_in_command.clone();
        async move {
            let mut reader = ctx.file().reader("f");
            let mut all = Vec::new();
            if through_async_read {
                let mut start = [0; 1000];
                reader.read_exact(&mut start).await?;
                all.extend_from_slice(&start);
                let rest_of_chunk = reader.next_chunk().await?.unwrap_or_default();
                all.extend_from_slice(&rest_of_chunk);
                reader.read_to_end(&mut all).await?;
            } else {
                while let Some(chunk) = reader.next_chunk().await? {
                    all.extend_from_slice(&chunk);
                }
            }
            *got.lock().unwrap() = all;
            anyhow::Ok(())
        }
    });
    let (client, server) = socket_pair().await;
    let script = async {
        let mut client = welcomed(client).await;
        loop {
            match next_server(&mut client).await {
                Some(ServerFrame::Request(request)) => {
                    let Operation::FileRead { offset, len, .. } = request.op else {
                        panic!("unexpected {:?}", request.op);
                    };
                    let start = (offset as usize).min(file.len());
                    let end = (start + (len as usize).min(SHORT)).min(file.len());
                    let reply = Reply::Data {
                        bytes: file[start..end].to_vec().into(),
                        eof: end == file.len(),
                    };
                    let answer = ClientFrame::Response(Response::ok(request.id, reply));
                    send_client(&mut client, &answer).await;
                }
                Some(ServerFrame::Exit(exit)) => break exit.status,
                other => panic!("unexpected {other:?}"),
            }
        }
    };
    let status = serve_script(&terminal, server, script).await;
    assert_eq!(status, 0, "through AsyncRead: {through_async_read}");
    assert_same_bytes("the file read in chunks", &got.lock().unwrap(), &file);
}

/// Runs the client's side of the secure handshake with `device`.
/// Starts a resumable session as `device` on `client` and detaches from it
/// (acknowledgements skipped); the `resume` that re-attaches to it.
async fn detach_as(client: WebSocketStream<DuplexStream>, device: &StaticKey) -> Resume {
    let mut client = secure_client_as(client, device).await;
    send_client(&mut client, &ClientFrame::Hello(resumable_hello())).await;
    let Some(ServerFrame::Welcome(welcome)) = next_server(&mut client).await else {
        panic!("expected welcome");
    };
    send_client(&mut client, &ClientFrame::Detach(Detach {})).await;
    let token = loop {
        match next_server(&mut client).await {
            Some(ServerFrame::Detached(detached)) if detached.accepted => {
                break detached.token.expect("a token");
            }
            Some(ServerFrame::Ack(_)) => {}
            other => panic!("expected detached, got {other:?}"),
        }
    };
    Resume {
        session_id: welcome.session_id,
        token,
        received: 0,
    }
}

async fn secure_client_as(
    socket: WebSocketStream<DuplexStream>,
    device: &StaticKey,
) -> SecureSocket<DuplexStream> {
    let pin = ServerPin::FirstContact;
    let (socket, _) = secure::handshake(socket, device, &pin, "duplex", Duration::from_secs(10))
        .await
        .expect("the secure handshake");
    socket
}

/// A client that never acknowledges the exit of a resumable session, while
/// it keeps the connection alive with pings, is let go once the resume
/// grace period has passed since the exit: the server closes the connection
/// and the session ends. (It was kept for as long as the pings came.)
#[tokio::test(start_paused = true)]
async fn a_client_that_never_acknowledges_the_exit_is_let_go() {
    let grace = Duration::from_secs(3);
    let kept = exit_kept(grace, None).await;
    // The grace period from the command's end, which the client saw a
    // moment later (no time at all on this paused clock).
    assert!(
        kept + Duration::from_millis(100) >= grace && kept <= grace,
        "kept {kept:?}"
    );
}

/// A client still acknowledging what came before the exit (a slow link) is
/// given the grace period again from its last acknowledgement.
#[tokio::test(start_paused = true)]
async fn acknowledging_earlier_frames_moves_the_exits_deadline_on() {
    let grace = Duration::from_secs(3);
    let ack_after = Duration::from_secs(2);
    let kept = exit_kept(grace, Some(ack_after)).await;
    let want = ack_after + grace;
    assert!(
        kept + Duration::from_millis(100) >= want && kept <= want,
        "kept {kept:?}, want {want:?}"
    );
}

/// How long a resumable session is kept after its exit reaches a client
/// that pings but never acknowledges the exit; with `ack_after`, the client
/// acknowledges the frame before the exit that long after it.
async fn exit_kept(grace: Duration, ack_after: Option<Duration>) -> Duration {
    let terminal = Terminal::with_config(
        |ctx: Context| async move { ctx.stdout().println("done").await },
        Config {
            resume_grace: grace,
            ..Config::default()
        },
    );
    let (client, server) = socket_pair().await;
    let script = async {
        let mut client = welcomed_resumable(client).await;
        assert_eq!(until_exit(&mut client).await, 0);
        let exit_at = tokio::time::Instant::now();
        let mut heartbeat = tokio::time::interval(Duration::from_millis(500));
        let mut ack = ack_after.map(|after| Box::pin(tokio::time::sleep(after)));
        loop {
            // `None`: time for a heartbeat.
            let next = tokio::select! {
                frame = next_server(&mut client) => Some(frame),
                _ = heartbeat.tick() => None,
                () = async { ack.as_mut().unwrap().await }, if ack.is_some() => {
                    ack = None;
                    // The data frame ("done"), the first sequenced one.
                    send_client(&mut client, &ClientFrame::Ack(Ack { seq: 1 })).await;
                    continue;
                }
            };
            match next {
                None => {
                    if client.send(Message::Ping(Vec::new().into())).await.is_err() {
                        break;
                    }
                }
                Some(None) => break,
                Some(Some(ServerFrame::Ack(_))) => {}
                Some(Some(other)) => panic!("unexpected {other:?}"),
            }
        }
        exit_at.elapsed()
    };
    // `serve_script` fails if the session is still there after 10 s.
    let kept = serve_script(&terminal, server, script).await;
    assert_eq!(terminal.session_count(), 0);
    kept
}

/// The exit's deadline counts only while a client is connected: a detached
/// session whose command ends meanwhile still waits the detach time, and
/// the client re-attaching well after the resume grace period gets the
/// output and the exit.
#[tokio::test(start_paused = true)]
async fn a_detached_session_keeps_its_exit_beyond_the_resume_grace() {
    let terminal = Terminal::with_config(
        |ctx: Context| async move {
            tokio::time::sleep(Duration::from_secs(1)).await;
            ctx.stdout().println("done").await
        },
        Config {
            resume_grace: Duration::from_secs(2),
            detach_keep: Duration::from_secs(60),
            ..Config::default()
        },
    );
    let device = StaticKey::generate().unwrap();
    let serve = |server| tokio::spawn(terminal.serve(WsTransport::plain(server)));
    let script = async {
        let (client, server) = socket_pair().await;
        let first = serve(server);
        let resume = detach_as(client, &device).await;
        // The command ends after 1 s; the resume grace would end at 3 s.
        tokio::time::sleep(Duration::from_secs(5)).await;
        let (client, server) = socket_pair().await;
        let second = serve(server);
        let mut client = secure_client_as(client, &device).await;
        send_client(&mut client, &ClientFrame::Resume(resume)).await;
        let (status, frames) = frames_until_exit(&mut client).await;
        send_client(&mut client, &ClientFrame::Ack(Ack { seq: 2 })).await;
        first.await.unwrap();
        second.await.unwrap();
        (status, frames)
    };
    let (status, frames) = tokio::time::timeout(Duration::from_secs(30), script)
        .await
        .expect("the session hung");
    assert_eq!(status, 0);
    assert!(matches!(frames[0], ServerFrame::Resumed(_)), "{frames:?}");
    assert!(
        matches!(&frames[1], ServerFrame::Data(data) if &data.bytes[..] == b"done\n"),
        "{frames:?}"
    );
    assert_eq!(terminal.session_count(), 0);
}

/// One handshake deadline covers the secure handshake and the hello: a
/// client that takes most of it for the first is told "no hello" when it
/// ends, not a whole handshake time-out later. (Each had its own deadline.)
#[tokio::test(start_paused = true)]
async fn one_deadline_covers_the_whole_handshake() {
    let timeout = Duration::from_secs(4);
    let terminal = Terminal::with_config(
        |_ctx: Context| async move { anyhow::Ok(()) },
        Config {
            handshake_timeout: timeout,
            ..Config::default()
        },
    );
    let (client, server) = socket_pair().await;
    let started = tokio::time::Instant::now();
    let script = async {
        // Slow, but within the deadline, for the secure handshake...
        tokio::time::sleep(Duration::from_secs(3)).await;
        let mut client = secure_client(client).await;
        // ... then no hello.
        let told = next_server(&mut client).await;
        (told, started.elapsed())
    };
    let (told, at) = serve_script(&terminal, server, script).await;
    assert!(
        matches!(&told, Some(ServerFrame::Error(error)) if error.message.contains("no hello")),
        "{told:?}"
    );
    assert!(
        at <= timeout + Duration::from_millis(100),
        "told after {at:?}"
    );
}

/// The saved-login check runs before anyone logged in, so any client can
/// answer its read: a client that answers with endless junk (never the end
/// of the file) gets the file taken for no token and deleted, not megabytes
/// held in the server's memory (it took up to 256 MiB).
#[tokio::test]
async fn the_saved_login_check_reads_no_more_than_a_token() {
    let issuer =
        terminalwire_server::tokens::TokenIssuer::new(&[7u8; 32], Duration::from_secs(3600))
            .unwrap();
    let terminal = Terminal::new(move |ctx: Context| {
        let issuer = issuer.clone();
        async move {
            let state = ctx.session(&issuer).await?;
            let rejected = matches!(
                state,
                terminalwire_server::tokens::SessionState::Rejected(_)
            );
            anyhow::Ok(if rejected { 3 } else { 4 })
        }
    });
    let (client, server) = socket_pair().await;
    let read = serve_script(&terminal, server, async move {
        let mut client = secure_client(client).await;
        let mut hello = hello(&["whoami"]);
        hello.storage = Some("/home/u/.terminalwire/authorities/example.test/storage".into());
        send_client(&mut client, &ClientFrame::Hello(hello)).await;
        assert!(matches!(
            next_server(&mut client).await,
            Some(ServerFrame::Welcome(_))
        ));
        let mut read = 0u64;
        loop {
            match next_server(&mut client).await {
                Some(ServerFrame::Request(request)) => {
                    let reply = match request.op {
                        Operation::FileRead { path, len, .. } => {
                            assert!(path.ends_with("/session.token"), "{path}");
                            read += u64::from(len);
                            assert!(read <= 1 << 20, "the server read {read} bytes of junk");
                            Reply::Data {
                                bytes: vec![b'x'; len as usize].into(),
                                eof: false,
                            }
                        }
                        // The junk is removed as a rejected token.
                        Operation::FileDelete { path } => {
                            assert!(path.ends_with("/session.token"), "{path}");
                            Reply::Unit
                        }
                        other => panic!("unexpected {other:?}"),
                    };
                    send_client(
                        &mut client,
                        &ClientFrame::Response(Response::ok(request.id, reply)),
                    )
                    .await;
                }
                Some(ServerFrame::Exit(exit)) => {
                    assert_eq!(
                        exit.status, 3,
                        "the junk was not taken for a rejected token"
                    );
                    return read;
                }
                Some(_) => {}
                None => panic!("the session ended without an exit"),
            }
        }
    })
    .await;
    // A byte beyond the limit tells a file of exactly the limit from a longer one.
    let most = terminalwire_server::tokens::MAX_TOKEN_FILE + 1;
    assert!(read <= most, "asked for {read} bytes");
}

/// Re-attaches to a finished session every 1.5 s (its grace period is 2 s),
/// never acknowledging its exit, for up to 20 rounds; the command wrote
/// `lines` lines before it ended, and a re-attach in round `r` says it
/// received `received(r)` frames. Returns the round the session was gone
/// in, and how long after the exit, or `None` if it was kept all along.
async fn reattach_to_a_finished_session(
    lines: usize,
    received: impl Fn(u64) -> u64,
) -> Option<(u64, Duration)> {
    let grace = Duration::from_secs(2);
    let terminal = Terminal::with_config(
        move |ctx: Context| async move {
            for _ in 0..lines {
                ctx.stdout().println("line").await?;
            }
            anyhow::Ok(())
        },
        Config {
            resume_grace: grace,
            detach_keep: Duration::from_secs(3600),
            ..Config::default()
        },
    );
    let device = StaticKey::generate().unwrap();
    let serve = |server| tokio::spawn(terminal.serve(WsTransport::plain(server)));
    let script = async {
        let (client, server) = socket_pair().await;
        serve(server);
        let mut client = secure_client_as(client, &device).await;
        send_client(&mut client, &ClientFrame::Hello(resumable_hello())).await;
        let Some(ServerFrame::Welcome(welcome)) = next_server(&mut client).await else {
            panic!("expected welcome");
        };
        let mut token = welcome.resume.expect("resumable").token;
        // The command ends; its exit is never acknowledged.
        until_exit(&mut client).await;
        let ended = tokio::time::Instant::now();
        send_client(&mut client, &ClientFrame::Detach(Detach {})).await;
        loop {
            match next_server(&mut client).await {
                Some(ServerFrame::Detached(detached)) => {
                    assert!(!detached.accepted, "a finished session was detached");
                    break;
                }
                Some(ServerFrame::Ack(_)) => {}
                other => panic!("expected detached, got {other:?}"),
            }
        }
        drop(client);
        // Each time within the grace period of the connection before.
        for round in 0..20 {
            tokio::time::sleep(grace * 3 / 4).await;
            let (client, server) = socket_pair().await;
            serve(server);
            let mut client = secure_client_as(client, &device).await;
            let resume = Resume {
                session_id: welcome.session_id.clone(),
                token: token.clone(),
                received: received(round),
            };
            send_client(&mut client, &ClientFrame::Resume(resume)).await;
            match next_server(&mut client).await {
                Some(ServerFrame::Resumed(resumed)) => token = resumed.token,
                _ => return Some((round, ended.elapsed())),
            }
        }
        None
    };
    tokio::time::timeout(Duration::from_secs(600), script)
        .await
        .expect("the session hung")
}

/// A finished session whose exit is never acknowledged cannot be kept by
/// re-attaching in a loop (each re-attach gave another grace period) or by
/// detaching (another detach time): it gets one more grace period, then
/// ends.
#[tokio::test(start_paused = true)]
async fn reattaching_in_a_loop_does_not_keep_a_finished_session() {
    let (round, kept) = reattach_to_a_finished_session(0, |_| 0)
        .await
        .expect("the finished session was still kept after 20 re-attaches");
    assert!(round >= 1, "the first re-attach gets its grace period");
    assert!(kept <= Duration::from_secs(8), "kept for {kept:?}");
}

/// A client whose link keeps dropping while it takes in a finished
/// command's output is not one that ignores the exit: each re-attach that
/// says it received more gets a grace period, as an acknowledgement would,
/// up to ten grace periods after the exit (a frame per grace period would
/// otherwise keep it for as many periods as there are frames).
#[tokio::test(start_paused = true)]
async fn reattaching_with_progress_keeps_a_finished_session_for_a_while() {
    let gone = reattach_to_a_finished_session(400, |round| round + 1).await;
    let Some((round, kept)) = gone else {
        panic!("a finished session was kept for 20 re-attaches of 1.5 s (10 grace periods of 2 s)")
    };
    assert!(
        round >= 12,
        "a client making progress lost its session in round {round}"
    );
    // The cap, then at most a grace period and the 1.5 s until the next try.
    assert!(kept <= Duration::from_secs(24), "kept for {kept:?}");
}

/// An `OutputWriter` write given up (a time-out while the window is shut)
/// keeps its half-done write, holding the stream's writer lock, inside the
/// writer. Once the client grants credit, a plain `ctx.stdout().print` must
/// still go through; it waits for that lock forever instead.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn print_after_an_output_writer_write_given_up_goes_through() {
    let gave_up = Arc::new(Notify::new());
    let gave_up_in_command = gave_up.clone();
    let terminal = Terminal::new(move |ctx: Context| {
        let gave_up = gave_up_in_command.clone();
        async move {
            use tokio::io::AsyncWriteExt;
            let mut out = ctx.stdout().writer();
            let big = vec![b'a'; 1000];
            let timed_out = tokio::time::timeout(Duration::from_millis(100), out.write_all(&big))
                .await
                .is_err();
            gave_up.notify_one();
            // The writer is kept (not dropped), as a struct field would be.
            let printed =
                tokio::time::timeout(Duration::from_secs(3), ctx.stdout().print("short")).await;
            ctx.stderr()
                .print(format!(
                    "timed out {timed_out}, print {}",
                    match printed {
                        Ok(Ok(())) => "ok",
                        Ok(Err(_)) => "failed",
                        Err(_) => "hung",
                    }
                ))
                .await?;
            drop(out);
            anyhow::Ok(())
        }
    });
    let (client, server) = socket_pair().await;
    let script = granting_once_given_up(client, &gave_up);
    let (status, _stdout, stderr) = serve_script(&terminal, server, script).await;
    assert_eq!(status, 0);
    assert_eq!(String::from_utf8_lossy(&stderr), "timed out true, print ok");
}

/// A `FileReader` whose read of one chunk failed goes on, when asked
/// again, with the chunk after it: the bytes of the failed chunk are
/// silently skipped (a hole in the file).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_reader_never_skips_a_failed_chunk() {
    const CHUNK: usize = 512 * 1024;
    let file = pattern(3 * CHUNK, 3);
    let got = Arc::new(Mutex::new((Vec::new(), Vec::new())));
    let got_in_command = got.clone();
    let terminal = Terminal::new(move |ctx: Context| {
        let got = got_in_command.clone();
        async move {
            let mut reader = ctx.file().reader("f");
            let mut all = Vec::new();
            let mut errors = Vec::new();
            for _ in 0..10 {
                match reader.next_chunk().await {
                    Ok(Some(chunk)) => all.extend_from_slice(&chunk),
                    Ok(None) => break,
                    Err(error) => errors.push(error.to_string()),
                }
            }
            *got.lock().unwrap() = (all, errors);
            anyhow::Ok(())
        }
    });
    let (client, server) = socket_pair().await;
    let script = async {
        let mut client = welcomed(client).await;
        let mut failed_once = false;
        loop {
            match next_server(&mut client).await {
                Some(ServerFrame::Request(request)) => {
                    let Operation::FileRead { offset, len, .. } = request.op else {
                        panic!("unexpected {:?}", request.op);
                    };
                    let answer = if offset == CHUNK as u64 && !failed_once {
                        failed_once = true;
                        Response::error(
                            request.id,
                            terminalwire_protocol::frame::OpError::new(ErrorCode::Io, "transient"),
                        )
                    } else {
                        let start = (offset as usize).min(file.len());
                        let end = (start + len as usize).min(file.len());
                        let reply = Reply::Data {
                            bytes: file[start..end].to_vec().into(),
                            eof: end == file.len(),
                        };
                        Response::ok(request.id, reply)
                    };
                    send_client(&mut client, &ClientFrame::Response(answer)).await;
                }
                Some(ServerFrame::Exit(exit)) => break exit.status,
                other => panic!("unexpected {other:?}"),
            }
        }
    };
    let status = serve_script(&terminal, server, script).await;
    assert_eq!(status, 0);
    let (all, errors) = &*got.lock().unwrap();
    assert_eq!(errors.len(), 1, "{errors:?}");
    // Either the reader stops after the error, or it gives the file whole;
    // never the file with its second chunk missing.
    assert!(
        all.len() == CHUNK || all == &file,
        "read {} bytes after the error; the file has {}, and the bytes read are {}",
        all.len(),
        file.len(),
        if file.starts_with(&all[..CHUNK]) && all[CHUNK..] == file[2 * CHUNK..] {
            "the file without its second chunk"
        } else {
            "something else"
        }
    );
}

/// A line of exactly the client's limit (64 KiB) is accepted when it ends
/// with `\n`; the same line ending with `\r\n` is refused as too long.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_line_at_the_limit_ending_in_crlf_is_read_like_one_ending_in_lf() {
    let terminal = Terminal::new(|ctx: Context| async move {
        for _ in 0..2 {
            match ctx.read_line(None).await {
                Ok(Some(line)) => ctx.stdout().println(format!("len {}", line.len())).await?,
                Ok(None) => ctx.stdout().println("eof").await?,
                Err(error) => ctx.stdout().println(format!("error {error}")).await?,
            }
        }
        anyhow::Ok(())
    });
    let line = "x".repeat(64 * 1024);
    for ending in ["\n", "\r\n"] {
        let stdin = format!("{line}{ending}next{ending}");
        let run = Session::args(&[])
            .stdin(stdin.as_bytes())
            .run(&terminal)
            .await;
        assert_eq!(run.status(), 0);
        assert_eq!(run.stdout_text(), "len 65536\nlen 4\n", "ending {ending:?}");
    }
}

/// After the session is over, a clone of the context kept by a task fails
/// its writes and requests (it does not report them done, nor hang).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_context_kept_after_the_session_fails_cleanly() {
    let (tx, rx) = tokio::sync::oneshot::channel::<Vec<String>>();
    let tx = Arc::new(Mutex::new(Some(tx)));
    let terminal = Terminal::new(move |ctx: Context| {
        let tx = tx.clone();
        async move {
            let kept = ctx.clone();
            tokio::spawn(async move {
                kept.closed().await;
                let mut results = Vec::new();
                for _ in 0..20 {
                    let write =
                        tokio::time::timeout(Duration::from_secs(1), kept.stdout().print("late"))
                            .await;
                    results.push(format!("write {write:?}"));
                    let read =
                        tokio::time::timeout(Duration::from_secs(1), kept.file().exists("x")).await;
                    results.push(format!("exists {read:?}"));
                    let line =
                        tokio::time::timeout(Duration::from_secs(1), kept.read_line(None)).await;
                    results.push(format!("line {line:?}"));
                }
                let _ = tx.lock().unwrap().take().unwrap().send(results);
            });
            ctx.stdout().println("done").await
        }
    });
    let run = Session::args(&[]).run(&terminal).await;
    assert_eq!(run.status(), 0);
    let results = tokio::time::timeout(Duration::from_secs(30), rx)
        .await
        .unwrap()
        .unwrap();
    // Failed within the time-out (`Ok(Err(..))`): a time-out is `Err(Elapsed)`.
    let bad: Vec<_> = results.iter().filter(|r| !r.contains(" Ok(Err(")).collect();
    assert!(bad.is_empty(), "{bad:?}");
}

/// "An Exit among them, however wrapped, ends with its status and no
/// message": also one inside an `io::Error` (as an app's own AsyncRead or
/// AsyncWrite would carry it through `tokio::io::copy`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_exit_inside_an_io_error_ends_with_its_status() {
    let terminal =
        Terminal::new(
            |_ctx: Context| async move { Err::<(), io::Error>(io::Error::other(Exit(3))) },
        );
    let run = Session::args(&[]).run(&terminal).await;
    assert_eq!(run.stderr_text(), "");
    assert_eq!(run.status(), 3);
}

/// `ctx.storage_path` names places inside the storage folder only: a name
/// that would leave it (`..`, absolute, a Windows drive) gets `None`, not a
/// path the client would have to refuse.
#[tokio::test]
async fn storage_path_never_leaves_the_storage_folder() {
    let terminal = Terminal::new(|ctx: Context| async move {
        for name in ctx.args() {
            let path = ctx.storage_path(name);
            ctx.stdout()
                .println(format!("{name:?} {}", path.as_deref().unwrap_or("none")))
                .await?;
        }
        anyhow::Ok(())
    });
    let names = [
        "notes.txt",
        "a/b.csv",
        "",
        ".",
        "./x",
        "..x",
        "x..",
        "../x",
        "..",
        "a/../../x",
        "a/..",
        "/etc/passwd",
        "//x",
        "..\\x",
        "\\\\server\\share",
        "C:\\x",
        "c:x",
        "a\0b",
    ];
    let mut hello = hello(&names);
    hello.storage = Some("/home/u/.tw/storage/".into());
    let run = Session::new(hello).run(&terminal).await;
    assert_eq!(run.status(), 0, "{}", run.stderr_text());
    let s = "/home/u/.tw/storage";
    let want = [
        format!("\"notes.txt\" {s}/notes.txt"),
        format!("\"a/b.csv\" {s}/a/b.csv"),
        format!("\"\" {s}/"),
        format!("\".\" {s}/"),
        format!("\"./x\" {s}/./x"),
        format!("\"..x\" {s}/..x"),
        format!("\"x..\" {s}/x.."),
        "\"../x\" none".to_owned(),
        "\"..\" none".to_owned(),
        "\"a/../../x\" none".to_owned(),
        "\"a/..\" none".to_owned(),
        "\"/etc/passwd\" none".to_owned(),
        "\"//x\" none".to_owned(),
        "\"..\\\\x\" none".to_owned(),
        "\"\\\\\\\\server\\\\share\" none".to_owned(),
        "\"C:\\\\x\" none".to_owned(),
        "\"c:x\" none".to_owned(),
        "\"a\\0b\" none".to_owned(),
    ];
    assert_eq!(run.stdout_text().lines().collect::<Vec<_>>(), want);
}

/// A password, raw mode or a key asked of a client whose stdin is piped
/// fails with `ResourceError::Unsupported` (apps match on it) and a message
/// that says what happened and what to do, not that the client lacks
/// support; the real client's refusal is reworded by the SDK.
#[tokio::test]
async fn a_password_from_piped_stdin_is_refused_with_a_message_that_says_why() {
    let terminal = Terminal::new(|ctx: Context| async move {
        let show = |what: &str, error: Option<ResourceError>| {
            let variant = match &error {
                Some(ResourceError::Unsupported { .. }) => "unsupported",
                _ => "UNEXPECTED",
            };
            let message = error.map(|error| error.to_string()).unwrap_or_default();
            format!("{what} {variant}: {message}")
        };
        let password = ctx.stdin().read_password("Password: ").await.err();
        let raw = ctx.set_raw_mode(true).await.err();
        let key = ctx.read_key().await.err();
        let out = ctx.stdout();
        out.println(show("password", password)).await?;
        out.println(show("raw", raw)).await?;
        out.println(show("key", key)).await?;
        anyhow::Ok(())
    });
    let mut hello = hello(&[]);
    hello.terminal.stdin = StreamFacts {
        kind: WireKind::Pipe,
        size: None,
        color: WireColor::None,
    };
    let run = Session::new(hello).stdin(b"piped\n").run(&terminal).await;
    assert_eq!(run.status(), 0, "{}", run.stderr_text());
    let advice = "stdin is not a terminal but a pipe (the command's input is piped or \
                  redirected); run the command in a terminal, without redirecting its input";
    assert_eq!(
        run.stdout_text().lines().collect::<Vec<_>>(),
        [
            format!("password unsupported: cannot read a password: {advice}"),
            format!("raw unsupported: cannot switch the terminal to raw mode: {advice}"),
            format!("key unsupported: cannot read a key: {advice}"),
        ]
    );
    // No prompt was shown for a password that could not be read.
    assert_eq!(run.stderr_text(), "");
}

/// A resumed session keeps the values the connection that started it
/// handed over (`serve_with`): the resuming connection's are not seen.
#[tokio::test(start_paused = true)]
async fn a_resumed_session_keeps_the_values_of_its_first_connection() {
    let resumed = Arc::new(Notify::new());
    let waiting = resumed.clone();
    let terminal = Terminal::new(move |ctx: Context| {
        let resumed = waiting.clone();
        async move {
            resumed.notified().await;
            let value = ctx.extension::<String>();
            ctx.stdout().println(format!("{value:?}")).await
        }
    });
    let device = StaticKey::generate().unwrap();
    let serve = |server, value: &str| {
        let mut extensions = axum::http::Extensions::new();
        extensions.insert(value.to_owned());
        tokio::spawn(terminal.serve_with(WsTransport::plain(server), extensions))
    };
    let script = async {
        let (client, server) = socket_pair().await;
        let first = serve(server, "first");
        let resume = detach_as(client, &device).await;
        let (client, server) = socket_pair().await;
        let second = serve(server, "second");
        let mut client = secure_client_as(client, &device).await;
        send_client(&mut client, &ClientFrame::Resume(resume)).await;
        let Some(ServerFrame::Resumed(_)) = next_server(&mut client).await else {
            panic!("expected resumed");
        };
        resumed.notify_one();
        let (status, frames) = frames_until_exit(&mut client).await;
        send_client(&mut client, &ClientFrame::Ack(Ack { seq: 2 })).await;
        first.await.unwrap();
        second.await.unwrap();
        (status, frames)
    };
    let (status, frames) = tokio::time::timeout(Duration::from_secs(30), script)
        .await
        .expect("the session hung");
    assert_eq!(status, 0);
    assert!(
        matches!(&frames[0], ServerFrame::Data(data) if &data.bytes[..] == b"Some(\"first\")\n"),
        "{frames:?}"
    );
}
