//! The protocol engine of one connection: handshake, frame dispatch, flow
//! control, requests in flight, the command's task and the session's end.

use std::collections::HashMap;
use std::io;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use futures_util::{FutureExt, SinkExt, StreamExt};
use serde_bytes::ByteBuf;
use terminalwire_protocol::flow::SendCredit;
use terminalwire_protocol::frame::{
    ClientFrame, Data, ErrorCode, Exit, Hello, Incompatible, Operation, Reply, Request, Response,
    ServerFrame, SessionError, SignalKind, Software, StreamId, Welcome,
};
use terminalwire_protocol::{SUPPORTED_VERSIONS, codec, negotiate};
use tokio::sync::{Notify, mpsc, oneshot, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::context::{ClientInfo, Context, ResourceError, SessionInfo};
use crate::outcome::{Command, Outcome};
use crate::terminal::Config;
use crate::transport::{FrameReader, FrameWriter, Inbound, Transport, TransportError};
use terminalwire_protocol::secure::Responder;

/// Exit status of a command cancelled by Ctrl-C (128 + SIGINT), like a
/// local program's.
pub(crate) const INTERRUPTED_STATUS: u8 = 130;

/// Capabilities this server implements.
pub(crate) const SERVER_CAPABILITIES: &[&str] = &["stdout", "stderr", "exit", "stdin.line"];

/// Frames queued for the writer task; small, since data frames are already
/// bounded by the client's window.
const OUTBOUND_QUEUE: usize = 64;

/// How long the final frame and the close may take before the session gives up.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);

/// Send side of one output stream.
#[derive(Debug)]
struct OutStream {
    sid: StreamId,
    credit: Mutex<SendCredit>,
    credit_added: Notify,
    /// Held for a whole `write_all`, so concurrent writers do not interleave
    /// within one write.
    writer: tokio::sync::Mutex<()>,
}

/// State shared by a session's engine and its [`Context`] clones.
#[derive(Debug)]
pub(crate) struct Shared {
    outbound: mpsc::Sender<ServerFrame>,
    /// Cancelled when the session is over (client gone, violation, exit sent).
    pub(crate) closed: CancellationToken,
    /// Cancelled when the server begins shutting down.
    pub(crate) shutdown: CancellationToken,
    streams: [OutStream; 2],
    max_chunk: usize,
    pending: Mutex<HashMap<u64, oneshot::Sender<Response>>>,
    next_request: AtomicU64,
    /// Bounds requests in flight to what clients accept; the rest wait.
    request_slots: Arc<tokio::sync::Semaphore>,
    /// The slot of each request the client has not answered yet: held until
    /// its response arrives, even if the requester gave up meanwhile (the
    /// client still counts it).
    slots_held: Mutex<HashMap<u64, tokio::sync::OwnedSemaphorePermit>>,
    /// The command handles Ctrl-C itself (else an interrupt cancels it).
    pub(crate) interrupts_handled: AtomicBool,
    /// Counts the interrupts delivered to the command.
    pub(crate) interrupts: watch::Sender<u64>,
    /// The client terminal's size (columns, rows), as last reported.
    pub(crate) size: watch::Sender<Option<(u16, u16)>>,
}

fn disconnected() -> io::Error {
    io::Error::new(io::ErrorKind::BrokenPipe, "the client disconnected")
}

impl Shared {
    async fn send(&self, frame: ServerFrame) -> Result<(), ResourceError> {
        tokio::select! {
            sent = self.outbound.send(frame) => sent.map_err(|_| ResourceError::Disconnected),
            () = self.closed.cancelled() => Err(ResourceError::Disconnected),
        }
    }

    /// Writes `bytes` on output stream `index` (0 stdout, 1 stderr) in chunks
    /// that fit the client's credit.
    pub(crate) async fn write_stream(&self, index: usize, mut bytes: &[u8]) -> io::Result<()> {
        let stream = &self.streams[index];
        let _one_writer = stream.writer.lock().await;
        while !bytes.is_empty() {
            let n = loop {
                let want = bytes.len().min(self.max_chunk);
                let n = stream
                    .credit
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .take(want);
                if n > 0 {
                    break n;
                }
                tokio::select! {
                    () = stream.credit_added.notified() => {}
                    () = self.closed.cancelled() => return Err(disconnected()),
                }
            };
            let (chunk, rest) = bytes.split_at(n);
            let frame = ServerFrame::Data(Data {
                sid: stream.sid,
                bytes: ByteBuf::from(chunk.to_vec()),
            });
            self.send(frame).await.map_err(|_| disconnected())?;
            bytes = rest;
        }
        Ok(())
    }

    /// Sends a request and waits for its response.
    pub(crate) async fn request(&self, op: Operation) -> Result<Reply, ResourceError> {
        let slot = tokio::select! {
            slot = self.request_slots.clone().acquire_owned() => {
                slot.map_err(|_| ResourceError::Disconnected)?
            }
            () = self.closed.cancelled() => return Err(ResourceError::Disconnected),
        };
        let id = self.next_request.fetch_add(1, Ordering::Relaxed);
        self.slots_held
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(id, slot);
        let (answer_tx, answer_rx) = oneshot::channel();
        self.pending
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(id, answer_tx);
        // Forget the request if this future is dropped before the answer.
        let _forget = PendingGuard { shared: self, id };
        self.send(ServerFrame::Request(Request {
            id: terminalwire_protocol::RequestId(id),
            op,
        }))
        .await?;
        let response = tokio::select! {
            answer = answer_rx => answer.map_err(|_| ResourceError::Disconnected)?,
            () = self.closed.cancelled() => return Err(ResourceError::Disconnected),
        };
        match (response.ok, response.error) {
            (_, Some(error)) => Err(error.into()),
            (Some(reply), None) => Ok(reply),
            (None, None) => Err(ResourceError::UnexpectedReply),
        }
    }

    fn grant(&self, sid: StreamId, bytes: u32) -> Result<(), String> {
        let stream = self
            .streams
            .iter()
            .find(|stream| stream.sid == sid)
            .ok_or_else(|| format!("window update for unknown stream {}", sid.0))?;
        stream
            .credit
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .grant(bytes)
            .map_err(|e| e.to_string())?;
        stream.credit_added.notify_one();
        Ok(())
    }

    fn complete(&self, response: Response) -> Result<(), String> {
        self.slots_held
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&response.id.0);
        let waiter = self
            .pending
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&response.id.0);
        match waiter {
            // The requester may have given up; that is fine.
            Some(waiter) => {
                let _ = waiter.send(response);
                Ok(())
            }
            None if response.id.0 < self.next_request.load(Ordering::Relaxed) => Ok(()),
            None => Err(format!(
                "response to request {} that was never sent",
                response.id.0
            )),
        }
    }
}

struct PendingGuard<'a> {
    shared: &'a Shared,
    id: u64,
}

impl Drop for PendingGuard<'_> {
    fn drop(&mut self) {
        self.shared
            .pending
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&self.id);
    }
}

/// Runs one session to its end. Never panics on peer input.
pub(crate) async fn run(
    transport: impl Transport,
    command: Arc<dyn Command>,
    config: Arc<Config>,
    shutdown: CancellationToken,
    session_id: String,
) {
    let span = tracing::info_span!("session", id = %session_id);
    async move {
        let (writer, reader) = transport.split();
        let (mut writer, mut reader, device) = match secure_accept(writer, reader, &config).await {
            Ok(secured) => secured,
            Err(reason) => {
                tracing::info!(%reason, "secure handshake failed");
                return;
            }
        };
        let hello = match handshake(&mut writer, &mut reader, &config, &session_id).await {
            Ok(hello) => hello,
            Err(reason) => {
                tracing::info!(%reason, "handshake failed");
                let _ = tokio::time::timeout(CLOSE_TIMEOUT, writer.close()).await;
                return;
            }
        };
        tracing::info!(
            client = %hello.client.name, version = %hello.client.version, os = %hello.os,
            authority = %hello.authority, "session started"
        );
        serve(
            writer, reader, hello, device, command, config, shutdown, session_id,
        )
        .await;
    }
    .instrument(span)
    .await;
}

/// Runs the Noise handshake as the responder, then wraps the transport so
/// that every frame is sealed and opened. Returns the device fingerprint.
async fn secure_accept(
    mut writer: FrameWriter,
    mut reader: FrameReader,
    config: &Config,
) -> Result<(FrameWriter, FrameReader, String), String> {
    let Some(identity) = &config.identity else {
        return Err("the server has no identity key".into());
    };
    let deadline = Instant::now() + config.handshake_timeout;
    let mut next = async || loop {
        match tokio::time::timeout_at(deadline, reader.next()).await {
            Err(_) => {
                return Err(format!(
                    "no secure handshake within {:?}",
                    config.handshake_timeout
                ));
            }
            Ok(None) => return Err("client closed during the secure handshake".to_owned()),
            Ok(Some(Err(error))) => return Err(format!("transport error: {error}")),
            Ok(Some(Ok(Inbound::Frame(bytes)))) => return Ok(bytes),
            Ok(Some(Ok(Inbound::Heartbeat))) => {}
            Ok(Some(Ok(Inbound::Unexpected(what)))) => return Err(format!("unexpected {what}")),
        }
    };
    let first = next().await?;
    let (responder, second) =
        Responder::respond(&identity.0, &first).map_err(|error| error.to_string())?;
    if tokio::time::timeout_at(deadline, writer.send(second))
        .await
        .map_or(true, |sent| sent.is_err())
    {
        return Err("could not answer the secure handshake".into());
    }
    let third = next().await?;
    let (device, channel) = responder
        .finish(&third)
        .map_err(|error| error.to_string())?;
    let (mut sealer, mut opener) = channel.split();
    let writer = writer.with(move |frame: Vec<u8>| {
        std::future::ready(sealer.seal(&frame).map_err(TransportError::new))
    });
    let reader = reader.map(move |inbound| match inbound {
        Ok(Inbound::Frame(sealed)) => opener
            .open(&sealed)
            .map(Inbound::Frame)
            .map_err(TransportError::new),
        other => other,
    });
    Ok((
        Box::pin(writer),
        Box::pin(reader),
        terminalwire_protocol::secure::fingerprint(&device),
    ))
}

async fn send_now(writer: &mut FrameWriter, frame: &ServerFrame) -> bool {
    tokio::time::timeout(CLOSE_TIMEOUT, writer.send(codec::encode(frame)))
        .await
        .is_ok_and(|sent| sent.is_ok())
}

async fn reject(writer: &mut FrameWriter, code: ErrorCode, message: String) -> String {
    send_now(
        writer,
        &ServerFrame::Error(SessionError {
            code,
            message: message.clone(),
        }),
    )
    .await;
    message
}

/// Reads and answers the client's hello. On failure the client has been told why.
async fn handshake(
    writer: &mut FrameWriter,
    reader: &mut FrameReader,
    config: &Config,
    session_id: &str,
) -> Result<Hello, String> {
    let deadline = Instant::now() + config.handshake_timeout;
    let hello = loop {
        let inbound = match tokio::time::timeout_at(deadline, reader.next()).await {
            Err(_) => {
                let message = format!("no hello within {:?}", config.handshake_timeout);
                return Err(reject(writer, ErrorCode::Protocol, message).await);
            }
            Ok(None) => return Err("client closed before hello".into()),
            Ok(Some(Err(error))) => return Err(format!("transport error before hello: {error}")),
            Ok(Some(Ok(inbound))) => inbound,
        };
        match inbound {
            Inbound::Heartbeat => continue,
            Inbound::Unexpected(what) => {
                return Err(reject(
                    writer,
                    ErrorCode::Protocol,
                    format!("expected hello, got {what}"),
                )
                .await);
            }
            Inbound::Frame(bytes) => match codec::decode::<ClientFrame>(&bytes) {
                Ok(ClientFrame::Hello(hello)) => break hello,
                Ok(other) => {
                    let message = format!("expected hello, got {}", client_frame_name(&other));
                    return Err(reject(writer, ErrorCode::Protocol, message).await);
                }
                Err(error) => {
                    return Err(
                        reject(writer, ErrorCode::Protocol, format!("bad hello: {error}")).await,
                    );
                }
            },
        }
    };
    let Some(version) = negotiate(SUPPORTED_VERSIONS, hello.versions) else {
        let message = config.incompatible_message.clone().unwrap_or_else(|| {
            format!(
                "this server speaks terminalwire protocol version {} but your client {} {} speaks {}; \
                 install a client that supports version {}",
                SUPPORTED_VERSIONS, hello.client.name, hello.client.version, hello.versions, SUPPORTED_VERSIONS.max
            )
        });
        send_now(
            writer,
            &ServerFrame::Incompatible(Incompatible {
                versions: SUPPORTED_VERSIONS,
                message,
            }),
        )
        .await;
        return Err(format!("incompatible client versions {}", hello.versions));
    };
    if hello.window == 0 || hello.max_chunk == 0 {
        return Err(reject(
            writer,
            ErrorCode::Protocol,
            "hello with a zero window or chunk size".into(),
        )
        .await);
    }
    let welcome = Welcome {
        version,
        server: Software {
            name: config.server_name.clone(),
            version: config.server_version.clone(),
        },
        session_id: session_id.to_owned(),
        capabilities: hello
            .capabilities
            .iter()
            .filter(|capability| SERVER_CAPABILITIES.contains(&capability.as_str()))
            .cloned()
            .collect(),
        window: config.window,
        max_chunk: config.max_chunk,
    };
    let capabilities = welcome.capabilities.clone();
    if !send_now(writer, &ServerFrame::Welcome(welcome)).await {
        return Err("could not send welcome".into());
    }
    Ok(Hello {
        capabilities,
        ..hello
    })
}

fn client_frame_name(frame: &ClientFrame) -> String {
    match frame {
        ClientFrame::Hello(_) => "hello".into(),
        ClientFrame::Data(_) => "data".into(),
        ClientFrame::Eof(_) => "eof".into(),
        ClientFrame::Window(_) => "window".into(),
        ClientFrame::Response(_) => "response".into(),
        ClientFrame::Signal(_) => "signal".into(),
        ClientFrame::Error(_) => "error".into(),
        ClientFrame::Unknown { tag } => format!("unknown frame type `{tag}`"),
        _ => "an unsupported frame".into(),
    }
}

/// Why the session loop stopped.
enum End {
    /// The command finished and its exit frame is queued.
    Finished,
    /// The client went away or the transport failed.
    Gone(String),
    /// The client broke the protocol; tell it.
    Violation(String),
    /// The shutdown grace period ran out.
    ShutdownExpired,
    /// The user pressed Ctrl-C and the command does not handle it.
    Interrupted,
}

#[allow(clippy::too_many_arguments)]
async fn serve(
    writer: FrameWriter,
    mut reader: FrameReader,
    hello: Hello,
    device: String,
    command: Arc<dyn Command>,
    config: Arc<Config>,
    shutdown: CancellationToken,
    session_id: String,
) {
    let (outbound, outbound_rx) = mpsc::channel(OUTBOUND_QUEUE);
    let out_stream = |sid| OutStream {
        sid,
        credit: Mutex::new(SendCredit::new(hello.window)),
        credit_added: Notify::new(),
        writer: tokio::sync::Mutex::new(()),
    };
    let shared = Arc::new(Shared {
        outbound,
        closed: CancellationToken::new(),
        shutdown: shutdown.child_token(),
        streams: [out_stream(StreamId::STDOUT), out_stream(StreamId::STDERR)],
        max_chunk: hello.max_chunk.min(config.max_chunk) as usize,
        pending: Mutex::new(HashMap::new()),
        next_request: AtomicU64::new(1),
        request_slots: Arc::new(tokio::sync::Semaphore::new(
            terminalwire_protocol::MAX_REQUESTS_IN_FLIGHT,
        )),
        slots_held: Mutex::new(HashMap::new()),
        interrupts_handled: AtomicBool::new(false),
        interrupts: watch::Sender::new(0),
        size: watch::Sender::new(
            hello
                .terminal
                .stdout
                .size
                .or(hello.terminal.stdin.size)
                .map(|size| (size.cols, size.rows)),
        ),
    });
    let info = SessionInfo {
        session_id,
        program_name: hello.program.name,
        args: hello.program.args,
        client: ClientInfo {
            name: hello.client.name,
            version: hello.client.version,
            os: hello.os,
            os_version: hello.os_version,
            arch: hello.arch,
            authority: hello.authority,
            device,
            storage: hello.storage,
            capabilities: hello.capabilities,
        },
        terminal: (&hello.terminal).into(),
    };
    let ctx = Context {
        shared: shared.clone(),
        info: Arc::new(info),
    };
    let writer_task = tokio::spawn(write_frames(writer, outbound_rx));
    let mut command_task = tokio::spawn(run_command(command, ctx).in_current_span());

    let mut idle_deadline = Instant::now() + config.idle_timeout;
    let mut shutdown_deadline: Option<Instant> = None;
    let end = loop {
        tokio::select! {
            inbound = reader.next() => {
                idle_deadline = Instant::now() + config.idle_timeout;
                match inbound {
                    None => break End::Gone("client closed the connection".into()),
                    Some(Err(error)) => break End::Gone(format!("transport error: {error}")),
                    Some(Ok(Inbound::Heartbeat)) => {}
                    Some(Ok(Inbound::Unexpected(what))) => break End::Violation(format!("unexpected {what}")),
                    Some(Ok(Inbound::Frame(bytes))) => {
                        if let Err(end) = dispatch(&shared, &bytes) {
                            break end;
                        }
                    }
                }
            }
            joined = &mut command_task => {
                if let Err(error) = joined {
                    tracing::error!(%error, "command task failed");
                }
                break End::Finished;
            }
            () = shutdown.cancelled(), if shutdown_deadline.is_none() => {
                tracing::info!(grace = ?config.shutdown_grace, "server shutting down; waiting for the command");
                shutdown_deadline = Some(Instant::now() + config.shutdown_grace);
            }
            () = tokio::time::sleep_until(shutdown_deadline.unwrap_or(idle_deadline)), if shutdown_deadline.is_some() => {
                break End::ShutdownExpired;
            }
            () = tokio::time::sleep_until(idle_deadline) => {
                break End::Gone(format!("no sign of life from the client for {:?}", config.idle_timeout));
            }
        }
    };

    let final_frame = match &end {
        End::Finished => None,
        End::Gone(reason) => {
            tracing::info!(%reason, "client gone");
            None
        }
        End::Violation(reason) => {
            tracing::warn!(%reason, "protocol violation by the client");
            Some(ServerFrame::Error(SessionError {
                code: ErrorCode::Protocol,
                message: reason.clone(),
            }))
        }
        End::Interrupted => {
            tracing::info!("interrupted by the user");
            Some(ServerFrame::Exit(Exit {
                status: INTERRUPTED_STATUS,
            }))
        }
        End::ShutdownExpired => Some(ServerFrame::Error(SessionError {
            code: ErrorCode::Shutdown,
            message: "the server is shutting down; the command was cancelled".into(),
        })),
    };
    if !matches!(end, End::Finished) {
        command_task.abort();
    }
    if let Some(frame) = final_frame {
        // The queue may be full of data the client will never read; don't wait long.
        let _ = tokio::time::timeout(CLOSE_TIMEOUT, shared.outbound.send(frame)).await;
    }
    if matches!(end, End::Gone(_)) {
        writer_task.abort();
    } else {
        // The writer sends the exit or error frame, then closes; meanwhile keep
        // reading so the client's window grants and close are consumed.
        let drain = async {
            while let Some(Ok(inbound)) = reader.next().await {
                if let Inbound::Frame(bytes) = inbound {
                    let _ = dispatch(&shared, &bytes);
                }
            }
        };
        tokio::select! {
            _ = writer_task => {}
            () = drain => {}
            () = tokio::time::sleep(CLOSE_TIMEOUT) => tracing::info!("client did not take the final frame in time"),
        }
    }
    shared.closed.cancel();
    tracing::info!("session ended");
}

/// Handles one frame from the client while the command runs.
fn dispatch(shared: &Shared, bytes: &[u8]) -> Result<(), End> {
    let frame =
        codec::decode::<ClientFrame>(bytes).map_err(|error| End::Violation(error.to_string()))?;
    match frame {
        ClientFrame::Window(adjust) => shared
            .grant(adjust.sid, adjust.bytes)
            .map_err(End::Violation),
        ClientFrame::Response(response) => shared.complete(response).map_err(End::Violation),
        ClientFrame::Signal(signal) => {
            tracing::debug!(?signal, "signal from the client");
            match signal.signal {
                SignalKind::Interrupt if shared.interrupts_handled.load(Ordering::Acquire) => {
                    shared.interrupts.send_modify(|count| *count += 1);
                    Ok(())
                }
                SignalKind::Interrupt => Err(End::Interrupted),
                SignalKind::Resize => {
                    if let Some(size) = signal.size {
                        shared.size.send_replace(Some((size.cols, size.rows)));
                    }
                    Ok(())
                }
                _ => Ok(()),
            }
        }
        ClientFrame::Error(error) => Err(End::Gone(format!(
            "client error ({}): {}",
            error.code, error.message
        ))),
        other => Err(End::Violation(format!(
            "unexpected {} frame",
            client_frame_name(&other)
        ))),
    }
}

/// Sends queued frames until the exit or error frame, then closes.
async fn write_frames(mut writer: FrameWriter, mut frames: mpsc::Receiver<ServerFrame>) {
    let mut buffer = Vec::with_capacity(64 * 1024);
    while let Some(frame) = frames.recv().await {
        let last = matches!(frame, ServerFrame::Exit(_) | ServerFrame::Error(_));
        buffer.clear();
        codec::encode_into(&frame, &mut buffer);
        if writer.feed(std::mem::take(&mut buffer)).await.is_err() {
            return;
        }
        // Batch frames that are already queued into one flush.
        if (last || frames.is_empty()) && writer.flush().await.is_err() {
            return;
        }
        if last {
            break;
        }
    }
    let _ = writer.close().await;
}

/// Runs the command, turns its end (return value, error or panic) into the
/// exit frame, and queues it after everything the command wrote.
async fn run_command(command: Arc<dyn Command>, ctx: Context) {
    let outcome = AssertUnwindSafe(command.run(ctx.clone()))
        .catch_unwind()
        .await;
    let status = match outcome {
        Ok(Outcome::Exit(status)) => status,
        Ok(Outcome::Failed(message)) => {
            tracing::info!(%message, "command failed");
            let _ = ctx
                .stderr()
                .write_all(format!("error: {message}\n").as_bytes())
                .await;
            1
        }
        Err(panic) => {
            let what = panic
                .downcast_ref::<&str>()
                .map(|s| (*s).to_owned())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown panic".into());
            tracing::error!(panic = %what, "command panicked");
            let message = "error: the command failed unexpectedly on the server (internal error)\n";
            let _ = ctx.stderr().write_all(message.as_bytes()).await;
            1
        }
    };
    let _ = ctx.shared.send(ServerFrame::Exit(Exit { status })).await;
}
