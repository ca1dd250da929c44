//! The client's protocol engine for one session.
//!
//! Generic over the WebSocket's underlying byte stream and over the local
//! streams ([`LocalIo`]), so tests run it over `tokio::io::duplex` with
//! in-memory output.

use std::io;
use std::sync::Arc;
use std::time::Duration;

use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use terminalwire_protocol::flow::ReceiveWindow;
use terminalwire_protocol::frame::{
    ClientFrame, ErrorCode, Hello, OpError, Operation, Reply, Request, Response, ServerFrame,
    SessionError, Signal, SignalKind, StreamId, TerminalMode, WindowAdjust,
};
use terminalwire_protocol::{MAX_FRAME_LEN, SUPPORTED_VERSIONS, codec};
use tokio::io::{
    AsyncBufRead, AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader,
};
use tokio::sync::{Mutex, Semaphore, mpsc};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::{self, Message};

use crate::error::ClientError;
use crate::resources::Resources;

/// Longest line `stdin_read_line` returns.
pub const MAX_LINE: usize = 64 * 1024;
/// A second Ctrl-C within this time of the first exits the client at once;
/// later ones are interrupts for the app again.
pub const DOUBLE_INTERRUPT: Duration = Duration::from_secs(3);
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
        }
    }
}

/// The local streams a session writes to and reads from.
pub struct LocalIo {
    /// Where the command's stdout goes.
    pub stdout: Box<dyn AsyncWrite + Send + Unpin>,
    /// Where the command's stderr (and prompts) go.
    pub stderr: Box<dyn AsyncWrite + Send + Unpin>,
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
            stdout: Box::new(tokio::io::stdout()),
            stderr: Box::new(tokio::io::stderr()),
            stdin: Box::new(tokio::io::stdin()),
        }
    }
}

enum Chunk {
    /// Bytes from the server, counted against the stream's window.
    Remote(Vec<u8>),
    /// Bytes the client writes itself (prompts), not counted.
    Local(Vec<u8>),
}

enum Event {
    Consumed { index: usize, len: usize },
    Failed { index: usize, error: io::Error },
}

/// One local output stream: a writer task fed by a queue that the server's
/// window bounds.
struct OutputPipe {
    sid: StreamId,
    name: &'static str,
    queue: Option<mpsc::UnboundedSender<Chunk>>,
    task: JoinHandle<()>,
    window: ReceiveWindow,
}

impl OutputPipe {
    fn spawn(
        index: usize,
        sid: StreamId,
        name: &'static str,
        mut writer: Box<dyn AsyncWrite + Send + Unpin>,
        window: u32,
        events: mpsc::UnboundedSender<Event>,
        gate: Option<Arc<tokio::sync::RwLock<()>>>,
    ) -> Self {
        let (queue, mut chunks) = mpsc::unbounded_channel::<Chunk>();
        let task = tokio::spawn(async move {
            let result: io::Result<()> = async {
                while let Some(chunk) = chunks.recv().await {
                    let (bytes, remote) = match chunk {
                        Chunk::Remote(bytes) => (bytes, true),
                        Chunk::Local(bytes) => (bytes, false),
                    };
                    // Not while the client's own consent prompt is on screen.
                    let _open = match &gate {
                        Some(gate) => Some(gate.read().await),
                        None => None,
                    };
                    writer.write_all(&bytes).await?;
                    // Flush when caught up: interactive output shows at once,
                    // bulk output is written in big pieces.
                    if chunks.is_empty() {
                        writer.flush().await?;
                    }
                    if remote {
                        let _ = events.send(Event::Consumed {
                            index,
                            len: bytes.len(),
                        });
                    }
                }
                writer.flush().await
            }
            .await;
            if let Err(error) = result {
                let _ = events.send(Event::Failed { index, error });
            }
        });
        OutputPipe {
            sid,
            name,
            queue: Some(queue),
            task,
            window: ReceiveWindow::new(window),
        }
    }

    fn push(&self, chunk: Chunk) {
        if let Some(queue) = &self.queue {
            // A failed writer reports through its event; nothing to do here.
            let _ = queue.send(chunk);
        }
    }
}

/// A socket of WebSocket messages: a `WebSocketStream`, or the
/// [`SecureSocket`](crate::secure::SecureSocket) that seals them.
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
type Source<S> = SplitStream<S>;

/// Runs a session on an open WebSocket and returns the command's exit status.
pub async fn run<S>(
    socket: S,
    hello: Hello,
    io: LocalIo,
    config: &SessionConfig,
) -> Result<u8, ClientError>
where
    S: Socket,
{
    let (mut sink, mut source) = socket.split();
    let window = hello.window;
    let max_chunk = hello.max_chunk as usize;
    send(&mut sink, &ClientFrame::Hello(hello)).await?;
    let welcome =
        match tokio::time::timeout(config.handshake_timeout, next_frame(&mut source)).await {
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
                        message: incompatible.message,
                    });
                }
                ServerFrame::Error(error) => return Err(server_error(error)),
                other => {
                    let message = format!("expected welcome, got {}", frame_name(&other));
                    return Err(violation(&mut sink, message).await);
                }
            },
        };
    if !SUPPORTED_VERSIONS.contains(welcome.version) {
        let message = format!(
            "the server chose protocol version {}, which this client (versions {SUPPORTED_VERSIONS}) did not offer",
            welcome.version
        );
        return Err(violation(&mut sink, message).await);
    }
    config.resources.set_session(&welcome.session_id);
    tracing::info!(session = %welcome.session_id, version = welcome.version, server = %welcome.server.name, "session open");

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
    let stdin = Arc::new(Mutex::new(BufReader::with_capacity(
        MAX_STDIN_CHUNK,
        io.stdin,
    )));
    let requests = Arc::new(Semaphore::new(config.max_requests_in_flight));
    let (responses_tx, mut responses) =
        mpsc::channel::<ClientFrame>(config.max_requests_in_flight.max(1));
    let mut heartbeat =
        tokio::time::interval_at(Instant::now() + config.heartbeat, config.heartbeat);
    let mut idle_deadline = Instant::now() + config.idle_timeout;
    let mut signals =
        if config.handle_signals {
            Some(Signals::new().map_err(|error| {
                ClientError::Config(format!("cannot watch for signals: {error}"))
            })?)
        } else {
            None
        };
    let mut interrupted: Option<Instant> = None;
    let mut in_flight = tokio::task::JoinSet::new();

    let result = loop {
        tokio::select! {
            signal = next_signal(&mut signals) => match signal {
                // A second Ctrl-C soon after the first: the user wants out now.
                LocalSignal::Interrupt if interrupted.is_some_and(|at: Instant| at.elapsed() < DOUBLE_INTERRUPT) => {
                    break Err(ClientError::Interrupted);
                }
                LocalSignal::Interrupt => {
                    interrupted = Some(Instant::now());
                    let frame = ClientFrame::Signal(Signal { signal: SignalKind::Interrupt, size: None });
                    if let Err(error) = send(&mut sink, &frame).await {
                        break Err(error);
                    }
                }
                LocalSignal::Resize => {
                    let frame = ClientFrame::Signal(Signal {
                        signal: SignalKind::Resize,
                        size: crate::facts::terminal_size(),
                    });
                    if let Err(error) = send(&mut sink, &frame).await {
                        break Err(error);
                    }
                }
                LocalSignal::Terminate(number) => break Err(ClientError::Terminated(number)),
            },
            message = next_message(&mut source) => {
                idle_deadline = Instant::now() + config.idle_timeout;
                let frame = match message {
                    Ok(Some(frame)) => frame,
                    Ok(None) => continue,
                    Err(ClientError::Protocol(message)) => break Err(violation(&mut sink, message).await),
                    Err(error) => break Err(error),
                };
                match frame {
                    ServerFrame::Data(data) => {
                        let Some(pipe) = pipes.iter_mut().find(|pipe| pipe.sid == data.sid) else {
                            let message = format!("data on stream {} which is not open", data.sid.0);
                            break Err(violation(&mut sink, message).await);
                        };
                        let len = data.bytes.len();
                        if len > max_chunk {
                            let message = format!("data chunk of {len} bytes exceeds the agreed maximum of {max_chunk}");
                            break Err(violation(&mut sink, message).await);
                        }
                        if let Err(error) = pipe.window.on_receive(len) {
                            break Err(violation(&mut sink, format!("on {}: {error}", pipe.name)).await);
                        }
                        if len > 0 {
                            pipe.push(Chunk::Remote(data.bytes.into_vec()));
                        }
                    }
                    ServerFrame::Request(request) => {
                        let Ok(permit) = requests.clone().try_acquire_owned() else {
                            let message = format!("more than {} requests in flight", config.max_requests_in_flight);
                            break Err(violation(&mut sink, message).await);
                        };
                        let responses = responses_tx.clone();
                        let stdin = stdin.clone();
                        let prompts = pipes[1].queue.clone();
                        let resources = config.resources.clone();
                        let stdin_is_terminal = config.stdin_is_terminal;
                        in_flight.spawn(async move {
                            let response = perform(request, &stdin, prompts, &resources, stdin_is_terminal).await;
                            let _ = responses.send(ClientFrame::Response(response)).await;
                            drop(permit);
                        });
                    }
                    ServerFrame::Exit(exit) => break Ok(exit.status),
                    ServerFrame::Error(error) => break Err(server_error(error)),
                    // No client → server stream is open yet; credit for one is harmless.
                    ServerFrame::Window(_) => {}
                    other => {
                        let message = format!("unexpected {} frame", frame_name(&other));
                        break Err(violation(&mut sink, message).await);
                    }
                }
            }
            Some(event) = events.recv() => match event {
                Event::Consumed { index, len } => {
                    let pipe = &mut pipes[index];
                    if let Some(grant) = pipe.window.on_consumed(len) {
                        let frame = ClientFrame::Window(WindowAdjust { sid: pipe.sid, bytes: grant });
                        if let Err(error) = send(&mut sink, &frame).await {
                            break Err(error);
                        }
                    }
                }
                Event::Failed { index, error } => {
                    break Err(if index == 0 && error.kind() == io::ErrorKind::BrokenPipe {
                        ClientError::BrokenPipe
                    } else {
                        ClientError::Output { stream: pipes[index].name, source: error }
                    });
                }
            },
            // Reap finished request tasks so the set stays small.
            Some(_) = in_flight.join_next(), if !in_flight.is_empty() => {}
            Some(response) = responses.recv() => {
                // Answers that are ready together leave in one flush.
                let mut batch = vec![response];
                while batch.len() < 64 {
                    match responses.try_recv() {
                        Ok(more) => batch.push(more),
                        Err(_) => break,
                    }
                }
                if let Err(error) = send_batch(&mut sink, &batch).await {
                    break Err(error);
                }
            }
            _ = heartbeat.tick() => {
                if let Err(error) = send_message(&mut sink, Message::Ping(Vec::new().into())).await {
                    break Err(error);
                }
            }
            () = tokio::time::sleep_until(idle_deadline) => {
                break Err(ClientError::ConnectionLost(format!(
                    "no sign of life from the server for {:?}", config.idle_timeout
                )));
            }
        }
    };

    // Requests still running (a prompt waiting for a line, say) end with
    // the session: dropping them restores echo and releases the stderr
    // queue they hold, so the output writers can finish.
    in_flight.abort_all();
    while in_flight.join_next().await.is_some() {}
    // Whatever the end, the terminal goes back to cooked mode and unfinished
    // streamed writes are dropped.
    let _ = crate::terminal::leave_raw_mode();
    config.resources.end_session();

    // Write out everything received before the end, whatever the end was.
    let flush_timeout = match result {
        // The user wants out now.
        Err(ClientError::Interrupted | ClientError::Terminated(_)) => Duration::ZERO,
        _ => config.flush_timeout,
    };
    let flushed = finish_outputs(&mut pipes, &mut events, result.is_ok(), flush_timeout).await;
    let _ = tokio::time::timeout(Duration::from_secs(1), sink.close()).await;
    match (result, flushed) {
        (Ok(status), Ok(())) => Ok(status),
        (Ok(_), Err(error)) => Err(error),
        (Err(error), _) => Err(error),
    }
}

/// Closes the output queues and waits for the writers. After a normal exit
/// the wait is unbounded (a slow reader of our stdout is not an error);
/// after a failure it is bounded.
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
        wait.await;
    } else if tokio::time::timeout(bound, wait).await.is_err() {
        return Ok(());
    }
    while let Ok(event) = events.try_recv() {
        if let Event::Failed { index, error } = event {
            return Err(if index == 0 && error.kind() == io::ErrorKind::BrokenPipe {
                ClientError::BrokenPipe
            } else {
                ClientError::Output {
                    stream: pipes[index].name,
                    source: error,
                }
            });
        }
    }
    Ok(())
}

/// Performs one request and builds its response; never fails the session.
async fn perform(
    request: Request,
    stdin: &Mutex<BufReader<Box<dyn AsyncRead + Send + Unpin>>>,
    prompts: Option<mpsc::UnboundedSender<Chunk>>,
    resources: &Resources,
    stdin_is_terminal: bool,
) -> Response {
    let prompt_with = |prompt: Option<String>| {
        if let (Some(prompt), Some(prompts)) = (prompt, &prompts) {
            let _ = prompts.send(Chunk::Local(prompt.into_bytes()));
        }
    };
    let result = match request.op {
        Operation::StdinReadLine { prompt } => {
            let mut stdin = stdin.lock().await;
            prompt_with(prompt);
            read_line(&mut *stdin).await
        }
        Operation::StdinReadPassword { prompt } => {
            if stdin_is_terminal {
                let mut stdin = stdin.lock().await;
                prompt_with(prompt);
                match crate::terminal::EchoOff::stdin() {
                    Ok(_echo_off) => read_line(&mut *stdin).await,
                    Err(error) => Err(OpError::new(
                        ErrorCode::Io,
                        format!("cannot turn off echo on the terminal: {error}"),
                    )),
                }
            } else {
                Err(OpError::new(
                    ErrorCode::Unsupported,
                    "stdin is not a terminal, so a password cannot be read without echo",
                ))
            }
        }
        Operation::TerminalMode { mode } if stdin_is_terminal => {
            let switched = match mode {
                TerminalMode::Raw => crate::terminal::enter_raw_mode(),
                TerminalMode::Cooked => crate::terminal::leave_raw_mode(),
                _ => Err(io::Error::new(
                    io::ErrorKind::Unsupported,
                    "this client does not know that terminal mode",
                )),
            };
            switched.map(|()| Reply::Unit).map_err(|error| {
                OpError::new(
                    ErrorCode::Io,
                    format!("cannot switch the terminal: {error}"),
                )
            })
        }
        Operation::ReadKey if stdin_is_terminal => {
            // Keys come from the terminal; hold stdin so no line read competes.
            let _stdin = stdin.lock().await;
            let was_raw = crate::terminal::is_raw();
            let read = async {
                if !was_raw {
                    crate::terminal::enter_raw_mode()?;
                }
                let key = tokio::task::spawn_blocking(crate::terminal::read_key_blocking)
                    .await
                    .map_err(io::Error::other)?;
                if !was_raw {
                    crate::terminal::leave_raw_mode()?;
                }
                key
            };
            read.await
                .map(Reply::Key)
                .map_err(|error| OpError::new(ErrorCode::Io, format!("cannot read a key: {error}")))
        }
        Operation::TerminalMode { .. } | Operation::ReadKey => Err(OpError::new(
            ErrorCode::Unsupported,
            "stdin is not a terminal",
        )),
        Operation::StdinRead { max } => {
            let mut stdin = stdin.lock().await;
            read_chunk(&mut *stdin, max as usize).await
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

/// Up to `max` bytes of what stdin has (at least one byte unless at end).
async fn read_chunk(stdin: &mut (impl AsyncBufRead + Unpin), max: usize) -> Result<Reply, OpError> {
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
    let mut bytes = Vec::new();
    // Reads through the session's one buffer: bytes after the newline stay
    // there for the next read instead of being lost with a local buffer.
    let mut limited = stdin.take(MAX_LINE as u64 + 1);
    let io_error =
        |error: io::Error| OpError::new(ErrorCode::Io, format!("reading stdin: {error}"));
    let n = limited
        .read_until(b'\n', &mut bytes)
        .await
        .map_err(io_error)?;
    if n == 0 {
        return Ok(Reply::Line { line: None });
    }
    if bytes.last() == Some(&b'\n') {
        bytes.pop();
        if bytes.last() == Some(&b'\r') {
            bytes.pop();
        }
    } else if bytes.len() > MAX_LINE {
        return Err(OpError::new(
            ErrorCode::Invalid,
            format!("input line longer than {MAX_LINE} bytes"),
        ));
    }
    let line = String::from_utf8(bytes)
        .map_err(|_| OpError::new(ErrorCode::Invalid, "input line is not valid UTF-8"))?;
    Ok(Reply::Line { line: Some(line) })
}

/// A signal the client itself received.
enum LocalSignal {
    Interrupt,
    Resize,
    Terminate(i32),
}

/// The process signals the client watches.
struct Signals {
    interrupt: tokio::signal::unix::Signal,
    resize: tokio::signal::unix::Signal,
    terminate: tokio::signal::unix::Signal,
    hangup: tokio::signal::unix::Signal,
}

impl Signals {
    fn new() -> io::Result<Signals> {
        use tokio::signal::unix::{SignalKind as Kind, signal};
        Ok(Signals {
            interrupt: signal(Kind::interrupt())?,
            resize: signal(Kind::window_change())?,
            terminate: signal(Kind::terminate())?,
            hangup: signal(Kind::hangup())?,
        })
    }
}

async fn next_signal(signals: &mut Option<Signals>) -> LocalSignal {
    let Some(signals) = signals else {
        return std::future::pending().await;
    };
    tokio::select! {
        Some(()) = signals.interrupt.recv() => LocalSignal::Interrupt,
        Some(()) = signals.resize.recv() => LocalSignal::Resize,
        Some(()) = signals.terminate.recv() => LocalSignal::Terminate(15),
        Some(()) = signals.hangup.recv() => LocalSignal::Terminate(1),
        else => std::future::pending().await,
    }
}

async fn send<S>(sink: &mut Sink<S>, frame: &ClientFrame) -> Result<(), ClientError>
where
    S: Socket,
{
    send_message(sink, Message::Binary(codec::encode(frame).into())).await
}

/// Sends several frames with one flush.
async fn send_batch<S>(sink: &mut Sink<S>, frames: &[ClientFrame]) -> Result<(), ClientError>
where
    S: Socket,
{
    let sending = async {
        for frame in frames {
            sink.feed(Message::Binary(codec::encode(frame).into()))
                .await?;
        }
        sink.flush().await
    };
    match tokio::time::timeout(SEND_TIMEOUT, sending).await {
        Ok(result) => result.map_err(lost),
        Err(_) => Err(ClientError::ConnectionLost(format!(
            "the server took no data for {SEND_TIMEOUT:?}"
        ))),
    }
}

/// Sends one message; a server that stops reading cannot hold the client
/// forever.
async fn send_message<S>(sink: &mut Sink<S>, message: Message) -> Result<(), ClientError>
where
    S: Socket,
{
    match tokio::time::timeout(SEND_TIMEOUT, sink.send(message)).await {
        Ok(result) => result.map_err(lost),
        Err(_) => Err(ClientError::ConnectionLost(format!(
            "the server took no data for {SEND_TIMEOUT:?}"
        ))),
    }
}

/// The next frame from the server, skipping pings and pongs.
async fn next_frame<S>(source: &mut Source<S>) -> Result<ServerFrame, ClientError>
where
    S: Socket,
{
    loop {
        if let Some(frame) = next_message(source).await? {
            return Ok(frame);
        }
    }
}

/// The server's next frame, or `None` for a ping or pong: a sign of life that
/// keeps the idle time-out from firing while a command prints nothing.
async fn next_message<S>(source: &mut Source<S>) -> Result<Option<ServerFrame>, ClientError>
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
        Message::Binary(bytes) => codec::decode::<ServerFrame>(&bytes)
            .map(Some)
            .map_err(|error| {
                ClientError::Protocol(format!("the server sent an invalid frame: {error}"))
            }),
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
    match error.code {
        ErrorCode::Shutdown => ClientError::ServerShutdown(error.message),
        code => ClientError::ServerError {
            code,
            message: error.message,
        },
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
        ServerFrame::Unknown { tag } => format!("unknown `{tag}`"),
        _ => "unsupported".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
        let mut input: &[u8] = b"\xff\xfe\n";
        assert_eq!(
            read_line(&mut input).await.unwrap_err().code,
            ErrorCode::Invalid
        );
    }
}
