//! The protocol engine of one connection: handshake, frame dispatch, flow
//! control, requests in flight, the command's task and the session's end.

use std::collections::{HashMap, VecDeque};
use std::io;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use axum::http::Extensions;
use bytes::Bytes;
use futures_util::{FutureExt, SinkExt, StreamExt};
use serde_bytes::ByteBuf;
use terminalwire_protocol::flow::SendCredit;
use terminalwire_protocol::frame::{
    Ack, CANCEL_CAPABILITY, Cancel, ClientFrame, Detached, ErrorCode, Exit, Hello, Incompatible,
    Operation, Reply, Request, Response, Resume, ResumeTicket, Resumed, ServerFrame, SessionError,
    SignalKind, Software, StreamId, Welcome,
};
use terminalwire_protocol::linger::Linger;
use terminalwire_protocol::liveness::{Alarm, Idle, IdleWatch};
use terminalwire_protocol::resume::{self, Receipts, ReplayBuffer, Token};
use terminalwire_protocol::{SUPPORTED_VERSIONS, codec, negotiate};
use tokio::sync::{Notify, mpsc, oneshot};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::context::{ClientFeatures, ClientInfo, Context, ResourceError, SessionInfo};
use crate::outcome::{Command, Outcome};
use crate::pending::{Completed, InputKind, KeptLine, Pending};
use crate::terminal::Config;
use crate::transport::{FrameReader, FrameWriter, Inbound, TransportError};
use terminalwire_protocol::secure::Responder;

/// Exit status of a command cancelled by Ctrl-C (128 + SIGINT), like a
/// local program's.
pub(crate) const INTERRUPTED_STATUS: u8 = 130;

/// Capabilities this server implements.
pub(crate) const SERVER_CAPABILITIES: &[&str] = &[
    "stdout",
    "stderr",
    "exit",
    "stdin.line",
    CANCEL_CAPABILITY,
    resume::CAPABILITY,
];

/// Frames queued for the writer task; small, since data frames are already
/// bounded by the client's window.
const OUTBOUND_QUEUE: usize = 64;

/// Most frames already read that one turn of the session loop handles
/// before it polls the command, the writer and its timers.
const INBOUND_BATCH: usize = 64;

/// How long the final frame and the close may take before the session gives up.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);

/// A finished resumable session waits for its client to acknowledge the
/// exit at most this many resume grace periods in all (20 minutes by
/// default), however often the client shows progress.
const EXIT_GRACE_PERIODS: u32 = 10;

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

/// What the command's side queues for the writer task.
#[derive(Debug)]
enum Outgoing {
    /// A frame to encode.
    Frame(Box<ServerFrame>),
    /// An encoded `data` frame (sequenced, never the last).
    Data(Box<[u8]>),
}

/// State shared by a session's engine and its [`Context`] clones.
#[derive(Debug)]
pub(crate) struct Shared {
    /// Small items: the channel's blocks hold 32 slots from the start, and
    /// an idle session should not pay 32 frames' worth of memory.
    outbound: mpsc::Sender<Outgoing>,
    /// Cancelled when the session is over (client gone, violation, exit sent).
    pub(crate) closed: CancellationToken,
    /// Cancelled when the server begins shutting down.
    pub(crate) shutdown: CancellationToken,
    streams: [OutStream; 2],
    max_chunk: usize,
    /// Requests waiting for answers, and input of reads given up.
    pending: Mutex<Pending>,
    /// The client knows `cancel`: an abandoned read is cancelled on it.
    cancels: bool,
    next_request: AtomicU64,
    /// Held from taking a request's id to queueing it, so that ids leave
    /// in order (tasks on other threads may send at once): the client
    /// reads stdin in the order reads come, and input kept for later reads
    /// is ordered by id (see `pending`).
    sending: Mutex<()>,
    /// Bounds requests in flight to what clients accept; the rest wait.
    request_slots: Arc<tokio::sync::Semaphore>,
    /// The slot of each request the client has not answered yet: held until
    /// its response arrives, even if the requester gave up meanwhile (the
    /// client still counts it).
    slots_held: Mutex<HashMap<u64, tokio::sync::OwnedSemaphorePermit>>,
    /// The command handles Ctrl-C itself (else an interrupt cancels it).
    pub(crate) interrupts_handled: AtomicBool,
    /// The command's function returned: its outcome is being reported
    /// (an error message written, the exit queued), and a Ctrl-C has
    /// nothing left to cancel.
    returned: AtomicBool,
    /// Interrupts delivered to the command and the terminal's size. One
    /// lock and one wake-up instead of a watch channel each: a watch
    /// channel allocates nine `Notify`s, a cost every idle session paid.
    signals: Mutex<Signals>,
    /// Wakes the command's waiters when `signals` changes, and reads waiting
    /// for given-up reads' answers when the last comes (one `Notify` less
    /// for every idle session; each waiter looks again at what it waits for).
    signal_changed: Notify,
    /// Why the command may not be detached now, if it may not.
    pub(crate) detach_refusal: Mutex<Option<String>>,
    /// Whether requests wait for their answers polling (`Config::linger`).
    /// (`std`'s clock: tokio's stands still in tests that pause time, and
    /// lingering would never end.)
    linger: Mutex<Linger<std::time::Instant>>,
}

/// The reply in a response, or its error.
fn into_reply(response: Response) -> Result<Reply, ResourceError> {
    match (response.ok, response.error) {
        (_, Some(error)) => Err(error.into()),
        (Some(reply), None) => Ok(reply),
        (None, None) => Err(ResourceError::UnexpectedReply),
    }
}

/// What the client signalled to the command.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Signals {
    /// Interrupts delivered to the command.
    pub(crate) interrupts: u64,
    /// The client terminal's size (columns, rows), as last reported.
    pub(crate) size: Option<(u16, u16)>,
    /// Size reports received.
    pub(crate) resizes: u64,
    /// `interrupts` when the command last took them in (started handling
    /// them, or was told of one): those after it are still to be told.
    pub(crate) interrupts_seen: u64,
    /// `resizes` when the command last looked at the size.
    pub(crate) resizes_seen: u64,
}

fn disconnected() -> io::Error {
    io::Error::new(io::ErrorKind::BrokenPipe, "the client disconnected")
}

impl Shared {
    /// The signals as they are now.
    pub(crate) fn signals(&self) -> Signals {
        *self.signals.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Changes what the command has taken in of the signals (no wake-up).
    pub(crate) fn take_in<T>(&self, change: impl FnOnce(&mut Signals) -> T) -> T {
        change(&mut self.signals.lock().unwrap_or_else(PoisonError::into_inner))
    }

    fn signal(&self, change: impl FnOnce(&mut Signals)) {
        change(&mut self.signals.lock().unwrap_or_else(PoisonError::into_inner));
        self.signal_changed.notify_waiters();
    }

    /// Resolves once `changed` holds of the signals (checked now and after
    /// every change).
    pub(crate) async fn signal_change(&self, changed: impl Fn(&Signals) -> bool) {
        self.woken_until(|| changed(&self.signals())).await;
    }

    /// Resolves once `done` holds, checked now and at every wake-up of
    /// `signal_changed`.
    async fn woken_until(&self, done: impl Fn() -> bool) {
        loop {
            let notified = self.signal_changed.notified();
            tokio::pin!(notified);
            // Registered before looking, so no change can slip between.
            notified.as_mut().enable();
            if done() {
                return;
            }
            notified.await;
        }
    }

    async fn send(&self, frame: ServerFrame) -> Result<(), ResourceError> {
        let outgoing = Outgoing::Frame(Box::new(frame));
        tokio::select! {
            sent = self.outbound.send(outgoing) => sent.map_err(|_| ResourceError::Disconnected),
            () = self.closed.cancelled() => Err(ResourceError::Disconnected),
        }
    }

    /// Writes `bytes` on output stream `index` (0 stdout, 1 stderr) in chunks
    /// that fit the client's credit.
    pub(crate) async fn write_stream(&self, index: usize, mut bytes: &[u8]) -> io::Result<()> {
        let stream = &self.streams[index];
        let _one_writer = stream.writer.lock().await;
        while !bytes.is_empty() {
            let want = bytes.len().min(self.max_chunk);
            let n = stream
                .credit
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .take(want);
            if n == 0 {
                tokio::select! {
                    () = stream.credit_added.notified() => {}
                    () = self.closed.cancelled() => return Err(disconnected()),
                }
                continue;
            }
            // Taken credit comes back only with a frame sent (the client
            // grants again what it receives): a write dropped before the send
            // gives it back.
            let mut taken = Untaken {
                credit: &stream.credit,
                n,
            };
            let (chunk, rest) = bytes.split_at(n);
            // Encoded here, straight from the caller's bytes: one copy. And
            // before waiting for room, so that the writer finds the next
            // frame ready as soon as there is room for it.
            let frame = codec::encode_data(stream.sid, chunk).into_boxed_slice();
            let room = tokio::select! {
                room = self.outbound.reserve() => room.map_err(|_| disconnected())?,
                () = self.closed.cancelled() => return Err(disconnected()),
            };
            room.send(Outgoing::Data(frame));
            taken.n = 0;
            bytes = rest;
        }
        Ok(())
    }

    /// Sends a request and waits for its response.
    pub(crate) async fn request(&self, op: Operation) -> Result<Reply, ResourceError> {
        self.request_noting(op, None).await
    }

    /// [`request`](Shared::request), setting `sent` once the request has
    /// left (from then on the client will perform it, whatever becomes of
    /// this future).
    pub(crate) async fn request_noting(
        &self,
        op: Operation,
        sent: Option<&AtomicBool>,
    ) -> Result<Reply, ResourceError> {
        self.request_answered(op, sent)
            .await
            .map(|(_, reply)| reply)
    }

    /// [`request_noting`](Shared::request_noting), with the id of the
    /// request whose answer the reply is: for stdin, when it was typed
    /// (the client reads stdin for reads of bytes, lines and passwords in
    /// the order they were sent, and ids are sent in order), which orders
    /// what reads given up and readers leave (see [`Pending`]).
    pub(crate) async fn request_answered(
        &self,
        op: Operation,
        sent: Option<&AtomicBool>,
    ) -> Result<(u64, Reply), ResourceError> {
        // Boxed, as is the wait below: every command's future holds room
        // for a request, and few requests read input.
        if InputKind::reads_input(&op)
            && let Some(left_over) = Box::pin(self.input_left_over(&op)).await?
        {
            return Ok(left_over);
        }
        let slot = tokio::select! {
            slot = self.request_slots.clone().acquire_owned() => {
                slot.map_err(|_| ResourceError::Disconnected)?
            }
            () = self.closed.cancelled() => return Err(ResourceError::Disconnected),
        };
        // Room in the queue before the request takes its id and its slot is
        // held: from then on nothing may stop it from being sent. Dropped
        // while waiting for room after that, it kept its slot for an answer
        // that could never come, and 64 of those stopped every request.
        let room = tokio::select! {
            room = self.outbound.reserve() => room.map_err(|_| ResourceError::Disconnected)?,
            () = self.closed.cancelled() => return Err(ResourceError::Disconnected),
        };
        // Not held across an await: taken and released within this poll.
        let in_order = self.sending.lock().unwrap_or_else(PoisonError::into_inner);
        let id = self.next_request.fetch_add(1, Ordering::Relaxed);
        self.slots_held
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(id, slot);
        let (answer_tx, answer_rx) = oneshot::channel();
        let alone = self.pending().insert(id, answer_tx);
        // Forget the request if this future is dropped before the answer
        // (a read of input is abandoned instead).
        let mut waiting = PendingGuard {
            shared: self,
            id,
            input: InputKind::of(&op).map(|kind| Box::new((kind, InputKind::most_bytes(&op)))),
            answer: answer_rx,
        };
        // Before the send: the answer may come before the send returns.
        self.lingering().sent(std::time::Instant::now());
        room.send(Outgoing::Frame(Box::new(ServerFrame::Request(Request {
            id: terminalwire_protocol::RequestId(id),
            op,
        }))));
        drop(in_order);
        if let Some(sent) = sent {
            sent.store(true, Ordering::Release);
        }
        // Only a request alone in flight lingers: with others in flight,
        // their answers keep the session awake, and many tasks polling in
        // turn would only take the runtime's time.
        if alone {
            // No answer is held across an await here: every command's
            // future holds this one's state, idle or not.
            if let Some(answer) = self.linger_for(&mut waiting.answer).await {
                return into_reply(answer?).map(|reply| (id, reply));
            }
        }
        let response = tokio::select! {
            answer = &mut waiting.answer => answer.map_err(|_| ResourceError::Disconnected)?,
            () = self.closed.cancelled() => return Err(ResourceError::Disconnected),
        };
        into_reply(response).map(|reply| (id, reply))
    }

    /// Polls for an answer while the client answers fast (`linger`), rather
    /// than sleep: the answer, or `None` once lingering is over.
    async fn linger_for(
        &self,
        answer_rx: &mut oneshot::Receiver<Response>,
    ) -> Option<Result<Response, ResourceError>> {
        while !self.closed.is_cancelled() && self.lingering().awake(std::time::Instant::now()) {
            match answer_rx.try_recv() {
                Ok(response) => return Some(Ok(response)),
                Err(oneshot::error::TryRecvError::Empty) => tokio::task::yield_now().await,
                Err(oneshot::error::TryRecvError::Closed) => {
                    return Some(Err(ResourceError::Disconnected));
                }
            }
        }
        None
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

    fn lingering(&self) -> MutexGuard<'_, Linger<std::time::Instant>> {
        self.linger.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn complete(&self, response: Response) -> Result<(), String> {
        self.lingering().heard(std::time::Instant::now());
        self.slots_held
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&response.id.0);
        let id = response.id.0;
        match self.pending().complete(response) {
            Completed::Delivered => Ok(()),
            Completed::Abandoned { settled } => {
                if settled {
                    self.signal_changed.notify_waiters();
                }
                Ok(())
            }
            // The requester may have given up; that is fine.
            Completed::Unclaimed if id < self.next_request.load(Ordering::Relaxed) => Ok(()),
            Completed::Unclaimed => Err(format!("response to request {id} that was never sent")),
        }
    }

    /// Puts stdin a reader took and did not hand on back for the next
    /// byte reads, each chunk with the id of the read that brought it (see
    /// [`Pending::unread`]).
    pub(crate) fn unread_stdin(&self, chunks: Vec<(u64, Vec<u8>)>) {
        self.pending().unread(chunks);
    }

    fn pending(&self) -> MutexGuard<'_, Pending> {
        self.pending.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Input that reads given up took and that answers `op`, once every
    /// read given up was answered: it comes first, in typed order.
    async fn input_left_over(&self, op: &Operation) -> Result<Option<(u64, Reply)>, ResourceError> {
        self.abandoned_reads_answered().await?;
        Ok(self.pending().take_leftover(op))
    }

    /// The start of the next line from stdin kept for byte reads, once
    /// every read given up was answered, for a line read of `line` (see
    /// [`Pending::take_line_bytes`]).
    pub(crate) async fn kept_line(
        &self,
        line: &InputKind,
    ) -> Result<Option<KeptLine>, ResourceError> {
        self.abandoned_reads_answered().await?;
        Ok(self.pending().take_line_bytes(line))
    }

    /// Resolves once no read the command gave up waits for its answer.
    async fn abandoned_reads_answered(&self) -> Result<(), ResourceError> {
        tokio::select! {
            () = self.woken_until(|| !self.pending().has_abandoned()) => Ok(()),
            () = self.closed.cancelled() => Err(ResourceError::Disconnected),
        }
    }

    /// Tells the client that request `id` is given up (it stops a read that
    /// has taken nothing yet). Called from a destructor: never waits.
    fn cancel(&self, id: u64) {
        let cancel = move || {
            Outgoing::Frame(Box::new(ServerFrame::Cancel(Cancel {
                id: terminalwire_protocol::RequestId(id),
            })))
        };
        match self.outbound.try_send(cancel()) {
            Err(mpsc::error::TrySendError::Full(_)) => {
                // The queue is full of output: the cancel follows it.
                if let Ok(runtime) = tokio::runtime::Handle::try_current() {
                    let outbound = self.outbound.clone();
                    runtime.spawn(async move { outbound.send(cancel()).await });
                }
            }
            // Sent, or the session is over.
            Ok(()) | Err(mpsc::error::TrySendError::Closed(_)) => {}
        }
    }
}

/// A request waiting for its answer; dropped, it gives up (see
/// [`Pending::give_up`]).
struct PendingGuard<'a> {
    shared: &'a Shared,
    id: u64,
    /// What a read of input reads, and the most bytes its answer may carry.
    input: Option<Box<(InputKind, u32)>>,
    answer: oneshot::Receiver<Response>,
}

impl Drop for PendingGuard<'_> {
    fn drop(&mut self) {
        let (input, most) = match self.input.take() {
            Some(input) => (Some(input.0), input.1),
            None => (None, u32::MAX),
        };
        let abandoned = self
            .shared
            .pending()
            .give_up(self.id, input, most, &mut self.answer);
        if abandoned && self.shared.cancels {
            self.shared.cancel(self.id);
        }
    }
}

/// Runs one connection to its end: a new session, or a new connection for
/// a session that is waiting to be resumed. Never panics on peer input.
///
/// The future lives as long as the session, idle or not, so it is kept
/// small: it holds the two halves of the transport rather than the
/// transport, and the handshake runs in a boxed future of its own (over a
/// kilobyte that the session would otherwise carry to its end).
#[allow(clippy::too_many_arguments)]
pub(crate) fn run(
    writer: FrameWriter,
    reader: FrameReader,
    command: Arc<dyn Command>,
    config: Arc<Config>,
    shutdown: CancellationToken,
    session_id: String,
    registry: Arc<Registry>,
    extensions: Extensions,
) -> impl Future<Output = ()> + Send + 'static {
    let span = tracing::info_span!("connection", id = %session_id);
    async move {
        let opening = Box::pin(open(
            writer, reader, &config, session_id, &registry, extensions,
        ));
        // A connection still in its handshake when the server shuts down is
        // closed: it watched nothing, and a client that said hello just
        // before the handshake time-out started its grace period then,
        // holding the shutdown well past its bound.
        let opened = tokio::select! {
            // A handshake done as the shutdown comes is a session: the
            // shutdown then ends it as it ends the others, with a word to
            // the client, not a bare close after its welcome.
            biased;
            opened = opening => opened,
            () = shutdown.cancelled() => {
                tracing::info!("server shutting down; closed a connection in its handshake");
                return;
            }
        };
        // Unboxed at once, so that the box is freed now and not when the
        // session ends.
        let Some(Opened {
            writer,
            reader,
            hello,
            session,
        }) = opened.map(|opened| *opened)
        else {
            return;
        };
        serve(
            writer, reader, hello, session, command, config, shutdown, registry,
        )
        .await;
    }
    .instrument(span)
}

/// A new session's connection after its handshake.
struct Opened {
    writer: FrameWriter,
    reader: FrameReader,
    hello: Hello,
    session: Started,
}

/// The handshakes of a connection: the secure one, then `hello` (a new
/// session, returned) or `resume` (handed to its session here).
async fn open(
    writer: FrameWriter,
    reader: FrameReader,
    config: &Config,
    session_id: String,
    registry: &Registry,
    extensions: Extensions,
) -> Option<Box<Opened>> {
    // One deadline for both handshakes: each had its own, and a slow client
    // could take twice the handshake time-out before it said hello.
    let deadline = Instant::now() + config.handshake_timeout;
    let (mut writer, mut reader, device) =
        match secure_accept(writer, reader, config, deadline).await {
            Ok(secured) => secured,
            Err(reason) => {
                tracing::info!(reason = %said(&reason), "secure handshake failed");
                return None;
            }
        };
    let first = match first_frame(&mut writer, &mut reader, config, deadline).await {
        Ok(first) => first,
        Err(reason) => {
            tracing::info!(reason = %said(&reason), "handshake failed");
            let _ = tokio::time::timeout(CLOSE_TIMEOUT, writer.close()).await;
            return None;
        }
    };
    let hello = match first {
        First::Hello(hello) => *hello,
        First::Resume(resume) => {
            reattach(writer, reader, resume, &device, registry).await;
            return None;
        }
    };
    let session = Started {
        id: session_id,
        device,
        ticket: None,
        extensions,
    };
    let (hello, session) = match handshake(&mut writer, hello, config, session).await {
        Ok(opened) => opened,
        Err(reason) => {
            tracing::info!(reason = %said(&reason), "handshake failed");
            let _ = tokio::time::timeout(CLOSE_TIMEOUT, writer.close()).await;
            return None;
        }
    };
    tracing::info!(
        session = %session.id, client = %said(&hello.client.name), version = %said(&hello.client.version),
        os = %said(&hello.os), authority = %said(&hello.authority), resumable = session.ticket.is_some(),
        "session started"
    );
    Some(Box::new(Opened {
        writer,
        reader,
        hello,
        session,
    }))
}

/// A session that passed its handshake.
struct Started {
    id: String,
    /// Fingerprint of the client's device key.
    device: String,
    /// The first resume token, when the session can be resumed.
    ticket: Option<Token>,
    /// The app's values from the connection that started the session.
    extensions: Extensions,
}

/// What a client opens a connection with.
enum First {
    Hello(Box<Hello>),
    Resume(Resume),
}

/// A new connection handed to the session it resumes.
pub(crate) struct Reattach {
    writer: FrameWriter,
    reader: FrameReader,
    /// Sequenced server frames the client has processed.
    received: u64,
    /// The token for the next resume (already in the registry).
    token: Token,
}

/// Where a session takes the connections that resume it.
type Door = Arc<Post>;

/// What a session's loop, its writer task and the resume registry hand each
/// other: orders for the writer, and mail for the loop (the writer's
/// reports, connections that resume the session).
///
/// Two queues under one lock with a wake-up each, instead of a tokio
/// channel per direction: each of those allocates cache-padded state and a
/// block of 32 slots up front, over a kilobyte that every idle session paid
/// three times. The queues grow only when used.
#[derive(Default)]
pub(crate) struct Post {
    queues: Mutex<Queues>,
    /// Wakes the writer: an order arrived, or orders were closed.
    to_writer: Notify,
    /// Wakes the session loop: mail arrived.
    to_loop: Notify,
}

#[derive(Default)]
struct Queues {
    orders: VecDeque<Control>,
    /// No more orders: the writer takes those queued, then stops (the
    /// loop ended), or it has stopped (orders are dropped).
    orders_closed: bool,
    mail: VecDeque<Mail>,
    /// The loop takes no more mail.
    mail_closed: bool,
}

/// Mail for the session loop.
enum Mail {
    /// A report from the writer task.
    Writer(WriterEvent),
    /// A connection that resumes the session.
    Reattach(Box<Reattach>),
}

impl Post {
    fn queues(&self) -> MutexGuard<'_, Queues> {
        self.queues.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Queues an order for the writer; dropped if the writer has stopped.
    fn order(&self, order: Control) {
        let refused = {
            let mut queues = self.queues();
            if queues.orders_closed {
                Some(order)
            } else {
                queue_order(&mut queues.orders, order);
                None
            }
        };
        // Dropped outside the lock (it may hold a connection).
        drop(refused);
        self.to_writer.notify_one();
    }

    /// The writer's next order; `None` once orders are closed and none is
    /// left. Cancel safe: an order is only taken by the call that returns it.
    async fn next_order(&self) -> Option<Control> {
        loop {
            {
                let mut queues = self.queues();
                if let Some(order) = queues.orders.pop_front() {
                    return Some(order);
                }
                if queues.orders_closed {
                    return None;
                }
            }
            // A wake-up given before this wait is kept (one permit), so
            // none is lost between the look above and the wait.
            self.to_writer.notified().await;
        }
    }

    /// The loop is done: the writer carries out what is queued, then stops.
    fn end_orders(&self) {
        self.queues().orders_closed = true;
        self.to_writer.notify_one();
    }

    /// The writer has stopped: queued and later orders are dropped.
    fn stop_orders(&self) {
        let dropped = {
            let mut queues = self.queues();
            queues.orders_closed = true;
            std::mem::take(&mut queues.orders)
        };
        drop(dropped);
    }

    /// Sends mail to the loop; gives it back once the loop takes no more.
    fn mail(&self, mail: Mail) -> Result<(), Mail> {
        {
            let mut queues = self.queues();
            if queues.mail_closed {
                return Err(mail);
            }
            queues.mail.push_back(mail);
        }
        self.to_loop.notify_one();
        Ok(())
    }

    /// A report from the writer for the loop (dropped once the loop ended).
    fn report(&self, event: WriterEvent) {
        let _ = self.mail(Mail::Writer(event));
    }

    /// The loop's next mail; never, once mail is closed. Cancel safe.
    async fn next_mail(&self) -> Mail {
        loop {
            let closed = {
                let mut queues = self.queues();
                if let Some(mail) = queues.mail.pop_front() {
                    return mail;
                }
                queues.mail_closed
            };
            if closed {
                return std::future::pending().await;
            }
            self.to_loop.notified().await;
        }
    }

    /// The loop takes no more mail; returns what was not taken.
    fn close_mail(&self) -> VecDeque<Mail> {
        let mut queues = self.queues();
        queues.mail_closed = true;
        std::mem::take(&mut queues.mail)
    }
}

/// Closes a session's post when its loop ends, however it ends: the
/// writer finishes the queued orders and stops, and mail is refused.
struct PostClosed(Arc<Post>);

impl std::ops::Deref for PostClosed {
    type Target = Post;

    fn deref(&self) -> &Post {
        &self.0
    }
}

impl Drop for PostClosed {
    fn drop(&mut self) {
        self.0.end_orders();
        drop(self.0.close_mail());
    }
}

/// Stops a session's orders when its writer task ends or is aborted.
struct OrdersStopped(Arc<Post>);

impl std::ops::Deref for OrdersStopped {
    type Target = Post;

    fn deref(&self) -> &Post {
        &self.0
    }
}

impl Drop for OrdersStopped {
    fn drop(&mut self) {
        self.0.stop_orders();
    }
}

/// Credit taken for a chunk not sent yet; given back if dropped.
struct Untaken<'a> {
    credit: &'a Mutex<SendCredit>,
    n: usize,
}

impl Drop for Untaken<'_> {
    fn drop(&mut self) {
        self.credit
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .untake(self.n);
    }
}

/// Sessions that can be resumed, by id: every running session whose client
/// has the `resume` capability, connected or not.
#[derive(Default)]
pub(crate) struct Registry {
    sessions: Mutex<HashMap<String, Resumable>>,
}

struct Resumable {
    device: String,
    /// The newest token the client has shown it holds.
    confirmed: Token,
    /// A newer token sent to the client (in `resumed` or `detached`) that
    /// it has not shown it received yet: the answer may have been lost with
    /// the connection, so `confirmed` stays valid until the client resumes
    /// with this one or sends a frame on the connection `resumed` opened.
    pending: Option<Token>,
    attach: Door,
}

impl Registry {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Resumable>> {
        self.sessions.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn insert(&self, id: &str, device: &str, token: Token, attach: Door) {
        self.lock().insert(
            id.to_owned(),
            Resumable {
                device: device.to_owned(),
                confirmed: token,
                pending: None,
                attach,
            },
        );
    }

    fn remove(&self, id: &str) {
        self.lock().remove(id);
    }

    /// A fresh token for the session, pending until the client confirms it
    /// (see [`Resumable::pending`]).
    fn rotate(&self, id: &str) -> Option<Token> {
        let token = new_token().ok()?;
        let mut sessions = self.lock();
        let session = sessions.get_mut(id)?;
        session.pending = Some(token.clone());
        Some(token)
    }

    /// The client has the pending token: the older one is spent.
    fn confirm(&self, id: &str) {
        if let Some(session) = self.lock().get_mut(id)
            && let Some(pending) = session.pending.take()
        {
            session.confirmed = pending;
        }
    }

    /// Checks a resume attempt by the device `device`; on success the next
    /// token (pending) is returned with the session's door. The presented
    /// token stays valid until the client confirms the next one, so a lost
    /// `resumed` does not lock the client out.
    fn claim(&self, resume: &Resume, device: &str) -> Result<(Door, Token), (ErrorCode, String)> {
        let mut sessions = self.lock();
        let Some(session) = sessions.get_mut(&resume.session_id) else {
            return Err((
                ErrorCode::Expired,
                format!(
                    "there is no session {} to resume: it ended, or it waited longer than its grace period",
                    resume.session_id
                ),
            ));
        };
        // Both checks always run, so a refusal does not tell which failed.
        let same_device = session.device == device;
        let shows_pending = session
            .pending
            .as_ref()
            .is_some_and(|pending| pending.matches(&resume.token));
        let right_token = shows_pending || session.confirmed.matches(&resume.token);
        if !(same_device && right_token) {
            return Err((
                ErrorCode::Denied,
                "this session can only be resumed by the device that started it, with its current token"
                    .into(),
            ));
        }
        let next = new_token().map_err(|error| (ErrorCode::Internal, error))?;
        if shows_pending && let Some(pending) = session.pending.take() {
            session.confirmed = pending;
        }
        session.pending = Some(next.clone());
        Ok((session.attach.clone(), next))
    }

    /// Sessions that can be resumed now.
    pub(crate) fn len(&self) -> usize {
        self.lock().len()
    }
}

/// 32 bytes from the operating system's random generator.
fn new_token() -> Result<Token, String> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).map_err(|error| format!("no random numbers: {error}"))?;
    Ok(Token(bytes))
}

/// Hands a resuming connection to its session, or tells the client why not.
async fn reattach(
    mut writer: FrameWriter,
    reader: FrameReader,
    resume: Resume,
    device: &str,
    registry: &Registry,
) {
    match registry.claim(&resume, device) {
        Ok((attach, token)) => {
            tracing::info!(session = %said(&resume.session_id), received = resume.received, "resume");
            let reattach = Box::new(Reattach {
                writer,
                reader,
                received: resume.received,
                token,
            });
            if let Err(Mail::Reattach(mut back)) = attach.mail(Mail::Reattach(reattach)) {
                let message = format!("session {} has just ended", resume.session_id);
                reject(&mut back.writer, ErrorCode::Expired, message).await;
                let _ = tokio::time::timeout(CLOSE_TIMEOUT, back.writer.close()).await;
            }
        }
        Err((code, message)) => {
            tracing::info!(session = %said(&resume.session_id), %code, message = %said(&message), "resume refused");
            reject(&mut writer, code, message).await;
            let _ = tokio::time::timeout(CLOSE_TIMEOUT, writer.close()).await;
        }
    }
}

/// Runs the Noise handshake as the responder, by `deadline`, then wraps the
/// transport so that every frame is sealed and opened. Returns the device
/// fingerprint.
async fn secure_accept(
    mut writer: FrameWriter,
    mut reader: FrameReader,
    config: &Config,
    deadline: Instant,
) -> Result<(FrameWriter, FrameReader, String), String> {
    let Some(identity) = &config.identity else {
        return Err("the server has no identity key".into());
    };
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
    if tokio::time::timeout_at(deadline, writer.send(Bytes::from(second)))
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
    let writer = writer.with(move |frame: Bytes| {
        std::future::ready(sealer.seal_message(&frame).map_err(TransportError::new))
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
    tokio::time::timeout(
        CLOSE_TIMEOUT,
        writer.send(Bytes::from(codec::encode(frame))),
    )
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

/// Reads the client's first frame, `hello` or `resume`, by `deadline` (the
/// handshake's, which the secure handshake started). On failure the client
/// has been told why.
async fn first_frame(
    writer: &mut FrameWriter,
    reader: &mut FrameReader,
    config: &Config,
    deadline: Instant,
) -> Result<First, String> {
    loop {
        let inbound = match tokio::time::timeout_at(deadline, reader.next()).await {
            Err(_) => {
                let message = format!(
                    "no hello within {:?} of connecting",
                    config.handshake_timeout
                );
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
            Inbound::Frame(bytes) => {
                return match codec::decode::<ClientFrame>(&bytes) {
                    Ok(ClientFrame::Hello(hello)) => Ok(First::Hello(Box::new(hello))),
                    Ok(ClientFrame::Resume(resume)) => Ok(First::Resume(resume)),
                    Ok(other) => {
                        let message = format!("expected hello, got {}", client_frame_name(&other));
                        Err(reject(writer, ErrorCode::Protocol, message).await)
                    }
                    Err(error) => {
                        Err(
                            reject(writer, ErrorCode::Protocol, format!("bad hello: {error}"))
                                .await,
                        )
                    }
                };
            }
        }
    }
}

/// Answers the client's hello. On failure the client has been told why.
async fn handshake(
    writer: &mut FrameWriter,
    hello: Hello,
    config: &Config,
    mut session: Started,
) -> Result<(Hello, Started), String> {
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
    if hello.window == 0 {
        return Err(reject(
            writer,
            ErrorCode::Protocol,
            "hello with a zero window".into(),
        )
        .await);
    }
    // A chunk of one byte made every byte of output a frame of its own,
    // encoded, sealed and sent: a client's one hello cost the server a
    // hundred to a thousand times the work of its output.
    if hello.max_chunk < Config::MIN_CHUNK {
        let message = format!(
            "hello with a chunk size of {} bytes (the least is {})",
            hello.max_chunk,
            Config::MIN_CHUNK
        );
        return Err(reject(writer, ErrorCode::Protocol, message).await);
    }
    let resumable = !config.resume_grace.is_zero()
        && hello
            .capabilities
            .iter()
            .any(|capability| capability == resume::CAPABILITY);
    let ticket = if resumable {
        match new_token() {
            Ok(token) => Some(token),
            Err(error) => {
                tracing::warn!(%error, "session cannot be resumed");
                None
            }
        }
    } else {
        None
    };
    let welcome = Welcome {
        version,
        server: Software {
            name: config.server_name.clone(),
            version: config.server_version.clone(),
        },
        session_id: session.id.clone(),
        capabilities: hello
            .capabilities
            .iter()
            .filter(|capability| SERVER_CAPABILITIES.contains(&capability.as_str()))
            .filter(|capability| ticket.is_some() || *capability != resume::CAPABILITY)
            .cloned()
            .collect(),
        window: config.window,
        max_chunk: config.max_chunk,
        resume: ticket.as_ref().map(|token| ResumeTicket {
            token: ByteBuf::from(token.0.to_vec()),
            grace_secs: secs(config.resume_grace),
            detach_secs: secs(config.detach_keep),
        }),
    };
    let capabilities = welcome.capabilities.clone();
    if !send_now(writer, &ServerFrame::Welcome(welcome)).await {
        return Err("could not send welcome".into());
    }
    session.ticket = ticket;
    Ok((
        Hello {
            capabilities,
            ..hello
        },
        session,
    ))
}

fn secs(duration: Duration) -> u32 {
    u32::try_from(duration.as_secs()).unwrap_or(u32::MAX)
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
        ClientFrame::Ack(_) => "ack".into(),
        ClientFrame::Resume(_) => "resume".into(),
        ClientFrame::Detach(_) => "detach".into(),
        ClientFrame::Unknown { tag } => format!("unknown frame type `{tag}`"),
        _ => "an unsupported frame".into(),
    }
}

/// The writer or the command, polled by the session's task.
type SessionPart = std::pin::Pin<Box<dyn Future<Output = ()> + Send>>;

/// Why the session loop stopped.
enum End {
    /// The command finished and its exit frame is queued (or, when the
    /// session is resumable, delivered and acknowledged).
    Finished,
    /// The client went away or the transport failed, and the session cannot
    /// be resumed.
    Gone(String),
    /// The client broke the protocol; tell it.
    Violation(String),
    /// The shutdown grace period ran out.
    ShutdownExpired,
    /// No client came back within the grace period (or the detach time).
    Expired(String),
    /// The command has ended, but the connected client did not acknowledge
    /// the exit within the resume grace period.
    ExitUnacknowledged,
}

/// What a frame from the client asks of the session loop.
enum Action {
    None,
    Ack(u64),
    Interrupt,
    Detach,
}

/// Orders for the writer task.
enum Control {
    /// Write on this connection from now on: first `first`, then the
    /// sequenced frames after `replay_from` that the client lacks.
    Attach(Box<Attachment>),
    /// Write this unsequenced frame now, ahead of queued frames. After an
    /// `error` frame the writer closes the connection and stops, as for
    /// `Close`.
    Send(Box<ServerFrame>),
    /// Write this unsequenced frame as the last one on the connection, then
    /// stop writing on it (keep buffering), as after `detached`.
    SendLast(Box<ServerFrame>),
    /// The client processed our sequenced frames up to here.
    Acked(u64),
    /// Stop writing on the connection (lost, or detached); keep buffering.
    Release,
    /// The session is over: flush, close the connection and stop.
    Close,
}

/// Queues `order` after `queue`, merging it into an order of its kind among
/// the acknowledgements and refusals at the queue's end: the client's
/// acknowledgements (the highest counts), ours (the highest is sent) and
/// `detached` refusals (one answers them all). A client that sends these
/// without reading what we write (our write blocked) cannot grow the queue:
/// between two other orders, each kind is queued once.
fn queue_order(queue: &mut VecDeque<Control>, order: Control) {
    for queued in queue.iter_mut().rev() {
        let merged = match (&mut *queued, &order) {
            (Control::Acked(queued), Control::Acked(seq)) => {
                *queued = (*queued).max(*seq);
                true
            }
            (Control::Send(queued), Control::Send(frame)) => match (&mut **queued, &**frame) {
                (ServerFrame::Ack(queued), ServerFrame::Ack(ack)) => {
                    queued.seq = queued.seq.max(ack.seq);
                    true
                }
                (ServerFrame::Detached(queued), ServerFrame::Detached(answer)) => {
                    !queued.accepted && !answer.accepted
                }
                _ => false,
            },
            _ => false,
        };
        if merged {
            return;
        }
        if !is_mergeable(queued) {
            break;
        }
    }
    queue.push_back(order);
}

/// Orders [`queue_order`] merges with their kind.
fn is_mergeable(order: &Control) -> bool {
    match order {
        Control::Acked(_) => true,
        Control::Send(frame) => matches!(
            &**frame,
            ServerFrame::Ack(_)
                | ServerFrame::Detached(Detached {
                    accepted: false,
                    ..
                })
        ),
        _ => false,
    }
}

/// A connection for the writer: [`Control::Attach`].
struct Attachment {
    writer: FrameWriter,
    generation: u64,
    first: Option<ServerFrame>,
    replay_from: Option<u64>,
}

/// What the writer task reports.
enum WriterEvent {
    /// Writing on connection `generation` failed.
    Lost { generation: u64, reason: String },
    /// The client's acknowledgements or resume point are impossible.
    Violation(String),
    /// The client acknowledged the exit frame: the session is complete.
    ExitAcked,
}

/// The client's current connection, as the session loop sees it.
struct Connection {
    reader: Option<FrameReader>,
    generation: u64,
    /// Set while no client is connected: when the session expires.
    parked_until: Option<Instant>,
    /// The client asked to detach; when it disconnects, keep the session
    /// for the detach time instead of the grace period.
    detaching: bool,
}

/// Ends the session's registration however its loop ends.
struct Registered {
    registry: Arc<Registry>,
    id: String,
}

impl Drop for Registered {
    fn drop(&mut self) {
        self.registry.remove(&self.id);
    }
}

/// Starts a session that passed its handshake: its shared state, its writer
/// task and its command's task. Returns the session's loop, which runs until
/// the session ends. Built before it runs, so that the loop's future (alive
/// as long as the session) holds only what the loop needs.
#[allow(clippy::too_many_arguments)]
fn serve(
    writer: FrameWriter,
    reader: FrameReader,
    hello: Hello,
    session: Started,
    command: Arc<dyn Command>,
    config: Arc<Config>,
    shutdown: CancellationToken,
    registry: Arc<Registry>,
) -> impl Future<Output = ()> + Send + 'static {
    let Started {
        id: session_id,
        device,
        ticket,
        extensions,
    } = session;
    let resumable = ticket.is_some();
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
        pending: Mutex::new(Pending::default()),
        cancels: ClientFeatures::agreed(&hello.capabilities).cancels_reads,
        next_request: AtomicU64::new(1),
        sending: Mutex::new(()),
        request_slots: Arc::new(tokio::sync::Semaphore::new(
            terminalwire_protocol::MAX_REQUESTS_IN_FLIGHT,
        )),
        slots_held: Mutex::new(HashMap::new()),
        interrupts_handled: AtomicBool::new(false),
        returned: AtomicBool::new(false),
        signals: Mutex::new(Signals {
            size: hello
                .terminal
                .stdout
                .size
                .or(hello.terminal.stdin.size)
                .map(|size| (size.cols, size.rows)),
            ..Signals::default()
        }),
        signal_changed: Notify::new(),
        detach_refusal: Mutex::new(None),
        linger: Mutex::new(Linger::with_budget(config.linger)),
    });
    let info = SessionInfo {
        session_id: session_id.clone(),
        program_name: hello.program.name,
        args: hello.program.args,
        client: ClientInfo {
            name: hello.client.name,
            version: hello.client.version,
            os: hello.os,
            os_version: hello.os_version,
            arch: hello.arch,
            authority: hello.authority,
            device: Some(device.clone()),
            storage: hello.storage,
            origin: hello.origin,
            features: ClientFeatures::agreed(&hello.capabilities),
        },
        terminal: (&hello.terminal).into(),
        extensions,
    };
    let ctx = Context {
        shared: shared.clone(),
        info: Arc::new(info),
    };
    let post = Arc::new(Post::default());
    // The writer and the command run inside the session's own task, not
    // tasks of their own: a chunk of output then goes from the command to
    // the writer without waking another worker thread (which cost a third
    // of the server's CPU while streaming; bench/PROFILE.md).
    let mut writer_task: SessionPart = Box::pin(write_frames(
        outbound_rx,
        post.clone(),
        resumable,
        config.replay_limit as u64,
    ));
    post.order(Control::Attach(Box::new(Attachment {
        writer,
        generation: 0,
        first: None,
        replay_from: None,
    })));
    // Only a resumable session has a door for new connections.
    if let Some(token) = ticket {
        registry.insert(&session_id, &device, token, post.clone());
    }
    let registered = Registered {
        registry,
        id: session_id,
    };
    let mut command_task: SessionPart = Box::pin(run_command(command, ctx));
    let mut connection = Connection {
        reader: Some(reader),
        generation: 0,
        parked_until: None,
        detaching: false,
    };
    let post = PostClosed(post);
    // The session loop: frames from the client, resuming connections, the
    // writer's reports, the command's end, shutdown and timers.
    async move {
        let registry = &*registered.registry;
        let session_id = &*registered.id;
        let mut command_done = false;
        let mut writer_done = false;
        let mut interrupted = false;
        let mut receipts = Receipts::new();
        // A token was sent that the client has not shown it received.
        let mut token_unconfirmed = false;
        let mut ack_deadline: Option<Instant> = None;
        let ack_delay = Duration::from_millis(resume::ACK_DELAY_MS);
        // The client's idle deadline, moved only when it passes: resetting a
        // timer for every frame woke tokio's timer driver on the other worker
        // each time. One timer for every deadline, made once (`liveness`).
        let mut idle_watch = IdleWatch::new(config.idle_timeout, Instant::now());
        let mut shutdown_deadline: Option<Instant> = None;
        // Once the command has ended, when the client must have acknowledged
        // its exit: the resume grace period after the end, or after the
        // client came back. Counted only while a client is connected (a
        // detached or lost one has its own deadline), so that a client that
        // keeps pinging but never acknowledges cannot keep the session.
        let mut exit_deadline: Option<Instant> = None;
        // The highest acknowledgement from the client (or count of frames
        // it said it received when it re-attached): each higher one moves
        // `exit_deadline` on.
        let mut acked_upto = 0u64;
        // Whether a re-attach has moved `exit_deadline` on since the client
        // last showed progress: one that shows none gets one more grace
        // period, not one per re-attach (re-attaching in a loop kept a
        // finished session, its replay buffer and its slots, forever).
        let mut exit_grace_renewed = false;
        // However the client makes progress, `exit_deadline` never passes
        // this (set when the command ends): taking in the replay buffer a
        // frame at a time, one per grace period, could last for years.
        let mut exit_kept_until: Option<Instant> = None;
        let exit_grace = |kept_until: Option<Instant>| {
            let at = Instant::now() + config.resume_grace;
            kept_until.map_or(at, |until| at.min(until))
        };
        let timer = tokio::time::sleep_until(idle_watch.deadline());
        tokio::pin!(timer);
        let mut alarm = Alarm::new();

        // A lost connection ends a session that cannot be resumed; a resumable
        // one waits for its client.
        let lose = |connection: &mut Connection, reason: String| -> Option<End> {
            if !resumable {
                return Some(End::Gone(reason));
            }
            let keep = if connection.detaching {
                config.detach_keep
            } else {
                config.resume_grace
            };
            tracing::info!(reason = %said(&reason), ?keep, detached = connection.detaching, "client disconnected; keeping the session");
            connection.reader = None;
            connection.generation += 1;
            connection.parked_until = Some(Instant::now() + keep);
            post.order(Control::Release);
            None
        };

        let end = 'session: loop {
            let idle = connection.reader.is_some().then_some(idle_watch.deadline());
            let exit_due = exit_deadline.filter(|_| connection.reader.is_some());
            let wake = [
                idle,
                shutdown_deadline,
                connection.parked_until,
                exit_due,
                ack_deadline,
            ]
            .into_iter()
            .flatten()
            .min();
            if let Some(at) = alarm.rearm(wake) {
                timer.as_mut().reset(at);
            }
            // In this order, the first ready branch wins: deadlines first, so
            // a client that never stops sending cannot hold them off; frames
            // read before the command runs (answers that came together
            // complete their requests together); the command before the
            // writer, so what it sends next leaves in the writer's next
            // write, with the acknowledgement the frames made due.
            tokio::select! {
                biased;
                () = shutdown.cancelled(), if shutdown_deadline.is_none() => {
                    tracing::info!(grace = ?config.shutdown_grace, "server shutting down; waiting for the command");
                    shutdown_deadline = Some(Instant::now() + config.shutdown_grace);
                }
                () = &mut timer, if alarm.is_armed() => {
                    alarm.fired();
                    // The earliest deadline that passed; any other is
                    // handled on the next turn, at once. None may have:
                    // the one the timer was set for went away.
                    let now = Instant::now();
                    let passed = |deadline: Option<Instant>| deadline.is_some_and(|at| at <= now);
                    if passed(shutdown_deadline) {
                        break End::ShutdownExpired;
                    } else if passed(idle) {
                        if idle_watch.deadline_passed(now) == Idle::Moved {
                            continue;
                        }
                        let reason = format!("no sign of life from the client for {:?}", config.idle_timeout);
                        if let Some(end) = lose(&mut connection, reason) {
                            break end;
                        }
                    } else if passed(connection.parked_until) {
                        break End::Expired(if connection.detaching {
                            "the detached session was not re-attached in time".into()
                        } else {
                            "the client did not come back within the grace period".into()
                        });
                    } else if passed(exit_due) {
                        break End::ExitUnacknowledged;
                    } else if passed(ack_deadline) {
                        ack_deadline = None;
                        if connection.reader.is_some() && let Some(seq) = receipts.pending() {
                            post.order(Control::Send(Box::new(ServerFrame::Ack(Ack { seq }))));
                        }
                    }
                }
                inbound = next_inbound(&mut connection.reader) => {
                    let mut inbound = inbound;
                    let mut handled = 1;
                    'frames: loop {
                        idle_watch.heard(Instant::now());
                        let bytes = match inbound {
                            None => {
                                match lose(&mut connection, "the client closed the connection".into()) {
                                    Some(end) => break 'session end,
                                    None => continue 'session,
                                }
                            }
                            Some(Err(error)) => {
                                match lose(&mut connection, format!("transport error: {error}")) {
                                    Some(end) => break 'session end,
                                    None => continue 'session,
                                }
                            }
                            Some(Ok(Inbound::Heartbeat)) => continue 'session,
                            Some(Ok(Inbound::Unexpected(what))) => break 'session End::Violation(format!("unexpected {what}")),
                            Some(Ok(Inbound::Frame(bytes))) => bytes,
                        };
                        // A frame on a resumed connection: the client sends none
                        // before `resumed` arrives, so it has the token it carried.
                        if token_unconfirmed {
                            token_unconfirmed = false;
                            registry.confirm(session_id);
                        }
                        let (action, sequenced) = match dispatch(&shared, &bytes, resumable) {
                            Ok(dispatched) => dispatched,
                            Err(end) => break 'session end,
                        };
                        if sequenced {
                            if let Some(seq) = receipts.on_frame(bytes.len()) {
                                post.order(Control::Send(Box::new(ServerFrame::Ack(Ack { seq }))));
                                ack_deadline = None;
                            } else if ack_deadline.is_none() {
                                ack_deadline = Some(Instant::now() + ack_delay);
                            }
                        }
                        match action {
                            Action::None => {}
                            Action::Ack(seq) => {
                                // A client still taking in what came before the
                                // exit (a slow link) is not one that ignores it.
                                if seq > acked_upto {
                                    acked_upto = seq;
                                    exit_grace_renewed = false;
                                    if let Some(at) = exit_deadline.as_mut() {
                                        *at = exit_grace(exit_kept_until);
                                    }
                                }
                                post.order(Control::Acked(seq));
                            }
                            Action::Interrupt => {
                                // Once the command returned, its status stands:
                                // a Ctrl-C that comes while the exit is on its
                                // way (its error message waiting for credit,
                                // say) came too late to stop anything, as one
                                // after a local program's exit does.
                                if !command_done && !shared.returned.load(Ordering::Acquire) {
                                    interrupted = true;
                                    // Dropped here and now: the command is cancelled.
                                    command_task = Box::pin(std::future::ready(()));
                                }
                            }
                            // Accepted already: nothing more goes to this client.
                            Action::Detach if connection.detaching => {}
                            Action::Detach => {
                                let refusal = if !resumable {
                                    Some("this session cannot be detached: the client did not ask for resumable sessions".to_owned())
                                } else if command_done {
                                    // Its exit is waiting for the client: a
                                    // detach would only keep a finished session.
                                    Some("the command has ended: there is nothing left to detach from".to_owned())
                                } else if config.detach_keep.is_zero() {
                                    Some("detaching is turned off on this server".to_owned())
                                } else {
                                    shared.detach_refusal.lock().unwrap_or_else(PoisonError::into_inner).clone()
                                };
                                let token = match refusal {
                                    Some(_) => None,
                                    None => registry.rotate(session_id),
                                };
                                let answer = match (token, refusal) {
                                    (Some(token), _) => {
                                        tracing::info!(keep = ?config.detach_keep, "client detaches");
                                        // Not `token_unconfirmed`: the client may send
                                        // frames before `detached` reaches it, so they
                                        // prove nothing. It shows the new token by
                                        // resuming with it (`Registry::claim`).
                                        connection.detaching = true;
                                        Detached {
                                            accepted: true,
                                            message: None,
                                            keep_secs: secs(config.detach_keep),
                                            token: Some(ByteBuf::from(token.0.to_vec())),
                                        }
                                    }
                                    (None, refusal) => Detached {
                                        accepted: false,
                                        message: Some(refusal.unwrap_or_else(|| "the server could not make a token to re-attach with".into())),
                                        keep_secs: 0,
                                        token: None,
                                    },
                                };
                                // When accepted, nothing more goes to this client; the
                                // frames the command writes meanwhile wait for `attach`.
                                post.order(if answer.accepted {
                                    Control::SendLast(Box::new(ServerFrame::Detached(answer)))
                                } else {
                                    Control::Send(Box::new(ServerFrame::Detached(answer)))
                                });
                            }
                        }
                        // Frames already read are handled before anything else
                        // runs: answers that came together complete their
                        // requests together, and the requests the command sends
                        // next leave in one write, not one write per answer.
                        if handled < INBOUND_BATCH
                            && let Some(next) = next_inbound(&mut connection.reader).now_or_never()
                        {
                            inbound = next;
                            handled += 1;
                            continue 'frames;
                        }
                        break 'frames;
                    }
                }
                mail = post.next_mail() => match mail {
                    Mail::Reattach(reattach) => {
                        connection.generation += 1;
                        connection.reader = Some(reattach.reader);
                        connection.parked_until = None;
                        connection.detaching = false;
                        token_unconfirmed = true;
                        idle_watch.restart(Instant::now());
                        // Having received more than it acknowledged is
                        // progress, as an acknowledgement is: a client on a
                        // link that keeps dropping still gets its grace.
                        if reattach.received > acked_upto {
                            acked_upto = reattach.received;
                            exit_grace_renewed = false;
                        }
                        if command_done && !exit_grace_renewed {
                            exit_grace_renewed = true;
                            exit_deadline = Some(exit_grace(exit_kept_until));
                        }
                        let received = receipts.received();
                        receipts.acknowledged_all();
                        ack_deadline = None;
                        tracing::info!(client_received = reattach.received, received, "client resumed");
                        post.order(Control::Attach(Box::new(Attachment {
                            writer: reattach.writer,
                            generation: connection.generation,
                            first: Some(ServerFrame::Resumed(Resumed {
                                received,
                                token: ByteBuf::from(reattach.token.0.to_vec()),
                            })),
                            replay_from: Some(reattach.received),
                        })));
                    }
                    Mail::Writer(WriterEvent::Lost { generation, reason }) => {
                        if generation == connection.generation
                            && let Some(end) = lose(&mut connection, reason)
                        {
                            break end;
                        }
                    }
                    Mail::Writer(WriterEvent::Violation(reason)) => break End::Violation(reason),
                    Mail::Writer(WriterEvent::ExitAcked) => break End::Finished,
                },
                () = &mut command_task, if !command_done => {
                    command_done = true;
                    if interrupted {
                        tracing::info!("interrupted by the user");
                        // After the frames already queued, so no output is lost.
                        let shared = shared.clone();
                        tokio::spawn(async move {
                            let _ = shared.send(ServerFrame::Exit(Exit { status: INTERRUPTED_STATUS })).await;
                        });
                    }
                    // A resumable session lives until the client has the exit
                    // (or lets the deadline for it pass).
                    if !resumable {
                        break End::Finished;
                    }
                    exit_kept_until = Instant::now()
                        .checked_add(config.resume_grace.saturating_mul(EXIT_GRACE_PERIODS));
                    exit_deadline = Some(exit_grace(exit_kept_until));
                }
                () = &mut writer_task, if !writer_done => writer_done = true,
            }
        };
        // Boxed: the ending is needed once, and its futures would otherwise
        // take room in the loop's future for the session's whole life.
        Box::pin(finish(
            end,
            shared,
            &post,
            registry,
            session_id,
            resumable,
            (!writer_done).then_some(writer_task),
            command_task,
            connection.reader.take(),
        ))
        .await;
    }
}

/// Ends a session once its loop has stopped.
#[allow(clippy::too_many_arguments)]
async fn finish(
    end: End,
    shared: Arc<Shared>,
    post: &Post,
    registry: &Registry,
    session_id: &str,
    resumable: bool,
    writer_task: Option<SessionPart>,
    command_task: SessionPart,
    mut reader: Option<FrameReader>,
) {
    // No resume can reach the session any more; one already on its way is
    // told so.
    registry.remove(session_id);
    for late in post.close_mail() {
        let Mail::Reattach(mut late) = late else {
            continue;
        };
        tokio::spawn(async move {
            let message = "the session has just ended".to_owned();
            reject(&mut late.writer, ErrorCode::Expired, message).await;
            let _ = tokio::time::timeout(CLOSE_TIMEOUT, late.writer.close()).await;
        });
    }
    let final_frame = match &end {
        End::Finished => None,
        End::Gone(reason) => {
            tracing::info!(reason = %said(reason), "client gone");
            None
        }
        End::Expired(reason) => {
            tracing::info!(reason = %said(reason), "session expired");
            None
        }
        End::ExitUnacknowledged => {
            tracing::info!(
                "the client did not acknowledge the exit within the resume grace period"
            );
            None
        }
        End::Violation(reason) => {
            tracing::warn!(reason = %said(reason), "protocol violation by the client");
            Some(ServerFrame::Error(SessionError {
                code: ErrorCode::Protocol,
                message: reason.clone(),
            }))
        }
        End::ShutdownExpired => Some(ServerFrame::Error(SessionError {
            code: ErrorCode::Shutdown,
            message: "the server is shutting down; the command was cancelled".into(),
        })),
    };
    // Cancelled unless it has finished (dropping a finished one is a no-op).
    drop(command_task);
    // Fatal errors go ahead of queued output; the writer closes after them.
    // No `Close` behind an error: it would abandon the error's write, and
    // the client would see a bare disconnect (and try to resume).
    // The client may not have read the last frame yet: the connection stays
    // until it closes too. (A resumable session that ends without one has
    // had its exit acknowledged, or lost its client.)
    // (Nor one parked without a connection: no close can come.)
    let client_closes = reader.is_some() && (final_frame.is_some() || !resumable);
    match final_frame {
        Some(frame) => post.order(Control::Send(Box::new(frame))),
        None if resumable => post.order(Control::Close),
        None => {}
    }
    if let Some(writer_task) = writer_task
        && !matches!(end, End::Gone(_) | End::Expired(_))
    {
        // The writer sends the exit or error frame, then closes; meanwhile,
        // and until the client closes too, keep reading: its window grants,
        // answers that crossed the exit and its close are consumed. (Dropped
        // as soon as the writer closed, the connection broke under a client
        // still sending an answer, which then reported a lost connection
        // instead of the exit status it had not read yet.)
        let drain = async {
            while let Some(Ok(inbound)) = next_inbound(&mut reader).await {
                if let Inbound::Frame(bytes) = inbound {
                    let _ = dispatch(&shared, &bytes, resumable);
                }
            }
        };
        let closing = async {
            if client_closes {
                tokio::join!(writer_task, drain);
            } else {
                tokio::select! {
                    _ = writer_task => {}
                    () = drain => {}
                }
            }
        };
        tokio::select! {
            () = closing => {}
            () = tokio::time::sleep(CLOSE_TIMEOUT) => tracing::info!("client did not take the final frame and close in time"),
        }
    }
    shared.closed.cancel();
    tracing::info!("session ended");
}

/// The next message on the connection; never, while there is none.
async fn next_inbound(reader: &mut Option<FrameReader>) -> Option<Result<Inbound, TransportError>> {
    match reader {
        Some(reader) => reader.next().await,
        None => std::future::pending().await,
    }
}

/// Handles one frame from the client while the command runs. Also says
/// whether the frame was sequenced (it counts towards acknowledgements).
fn dispatch(shared: &Shared, bytes: &[u8], resumable: bool) -> Result<(Action, bool), End> {
    let frame =
        codec::decode::<ClientFrame>(bytes).map_err(|error| End::Violation(error.to_string()))?;
    let sequenced = resumable && frame.is_sequenced();
    let action = match frame {
        ClientFrame::Window(adjust) => {
            shared
                .grant(adjust.sid, adjust.bytes)
                .map_err(End::Violation)?;
            Action::None
        }
        ClientFrame::Response(response) => {
            shared.complete(response).map_err(End::Violation)?;
            Action::None
        }
        ClientFrame::Signal(signal) => {
            tracing::debug!(?signal, "signal from the client");
            match signal.signal {
                SignalKind::Interrupt if shared.interrupts_handled.load(Ordering::Acquire) => {
                    shared.signal(|signals| signals.interrupts += 1);
                    Action::None
                }
                SignalKind::Interrupt => Action::Interrupt,
                SignalKind::Resize => {
                    if let Some(size) = signal.size {
                        shared.signal(|signals| {
                            signals.size = Some((size.cols, size.rows));
                            signals.resizes += 1;
                        });
                    }
                    Action::None
                }
                _ => Action::None,
            }
        }
        ClientFrame::Ack(ack) if resumable => Action::Ack(ack.seq),
        ClientFrame::Detach(_) => Action::Detach,
        ClientFrame::Error(error) => {
            return Err(End::Gone(format!(
                "client error ({}): {}",
                error.code, error.message
            )));
        }
        other => {
            return Err(End::Violation(format!(
                "unexpected {} frame",
                client_frame_name(&other)
            )));
        }
    };
    Ok((action, sequenced))
}

/// What the writer task handles next.
enum Next {
    Control(Control),
    Frame(Outgoing),
}

/// What one frame kept for replay costs besides its bytes: its slot, the
/// shared header of its bytes and the allocator's rounding. A client can
/// make every frame tiny (a `max_chunk` or credit of one byte), and with
/// only the bytes counted a session held five times its `replay_limit`.
const REPLAY_FRAME_OVERHEAD: u64 = 128;

/// The memory the replay buffer holds, as counted against `replay_limit`.
fn replay_held(replay: &ReplayBuffer<Bytes>) -> u64 {
    replay.bytes() + replay.len() as u64 * REPLAY_FRAME_OVERHEAD
}

/// Text a client chose (or that quotes it), as the server's log shows it:
/// at most [`LOGGED_CHARS`] characters, control, bidi and invisible
/// characters escaped (`login::is_hidden`), so that a client cannot write
/// megabytes into each line, forge lines of its own or hide words.
pub(crate) fn said(text: &str) -> String {
    let mut shown = String::new();
    for c in crate::devices::cut_at_chars(text, LOGGED_CHARS).chars() {
        if crate::login::is_hidden(c) {
            shown.extend(c.escape_default());
        } else {
            shown.push(c);
        }
    }
    shown
}

/// Most characters of client-chosen text in one field of a log line.
pub(crate) const LOGGED_CHARS: usize = 200;

/// Sends the session's frames on whichever connection the client has now.
/// For a resumable session, keeps every sequenced frame until the client
/// acknowledges it, and replays what a resuming client lacks; stops taking
/// frames from the command while `replay_limit` bytes are unacknowledged.
async fn write_frames(
    mut frames: mpsc::Receiver<Outgoing>,
    post: Arc<Post>,
    resumable: bool,
    replay_limit: u64,
) {
    let mut replay = ReplayBuffer::new();
    let mut exit_seq: Option<u64> = None;
    let mut outlet = Outlet {
        link: None,
        post: OrdersStopped(post),
        deferred: VecDeque::new(),
    };
    let mut frames_open = true;
    loop {
        let room = !resumable || replay_held(&replay) < replay_limit;
        let next = match outlet.deferred.pop_front() {
            Some(order) => Next::Control(order),
            None => tokio::select! {
                biased;
                order = outlet.post.next_order() => match order {
                    Some(order) => Next::Control(order),
                    None => return,
                },
                frame = frames.recv(), if room && frames_open => match frame {
                    Some(frame) => Next::Frame(frame),
                    None => {
                        frames_open = false;
                        continue;
                    }
                },
            },
        };
        match next {
            Next::Control(Control::Attach(attachment)) => {
                // Prepared apart, so that the attachment (a whole frame) takes
                // no room in this task's future while it writes.
                let Some(out) = outlet.attach(*attachment, &mut replay, exit_seq) else {
                    continue;
                };
                let count = out.len();
                for (index, bytes) in out.into_iter().enumerate() {
                    let flush = index + 1 == count;
                    outlet.write(bytes, flush).await;
                }
            }
            Next::Control(Control::Send(frame)) => {
                let last = matches!(*frame, ServerFrame::Error(_));
                // An acknowledgement leaves with the frames queued behind it,
                // in their write, when the writer takes them next.
                let flush = !(matches!(*frame, ServerFrame::Ack(_))
                    && room
                    && frames_open
                    && !frames.is_empty());
                outlet.write(codec::encode(&*frame).into(), flush).await;
                if last {
                    Box::pin(close(outlet.link.take())).await;
                    return;
                }
            }
            Next::Control(Control::SendLast(frame)) => {
                outlet.write(codec::encode(&*frame).into(), true).await;
                outlet.link = None;
            }
            Next::Control(Control::Acked(seq)) => {
                if let Err(error) = replay.ack(seq) {
                    outlet
                        .post
                        .report(WriterEvent::Violation(error.to_string()));
                } else if exit_seq.is_some_and(|exit| seq >= exit) {
                    outlet.post.report(WriterEvent::ExitAcked);
                }
            }
            Next::Control(Control::Release) => outlet.link = None,
            Next::Control(Control::Close) => {
                Box::pin(close(outlet.link.take())).await;
                return;
            }
            Next::Frame(Outgoing::Data(bytes)) => {
                let bytes = Bytes::from(bytes);
                // A `data` frame is sequenced; the replay shares its bytes.
                if resumable {
                    replay.push(bytes.clone());
                }
                outlet.write(bytes, frames.is_empty()).await;
            }
            Next::Frame(Outgoing::Frame(frame)) => {
                let last = match *frame {
                    ServerFrame::Error(_) => true,
                    ServerFrame::Exit(_) => !resumable,
                    _ => false,
                };
                let bytes = Bytes::from(codec::encode(&*frame));
                if resumable && frame.is_sequenced() {
                    let seq = replay.push(bytes.clone());
                    if matches!(*frame, ServerFrame::Exit(_)) {
                        exit_seq = Some(seq);
                    }
                }
                drop(frame);
                // Batch frames that are already queued into one flush.
                let flush = last || frames.is_empty();
                outlet.write(bytes, flush).await;
                if last {
                    Box::pin(close(outlet.link.take())).await;
                    return;
                }
            }
        }
    }
}

/// The writer task's connection and orders.
struct Outlet {
    /// The current connection and its generation, if any.
    link: Option<(FrameWriter, u64)>,
    /// Where the orders come from and the reports go; stopped when the
    /// writer ends.
    post: OrdersStopped,
    /// Orders that arrived during a write, in order.
    deferred: VecDeque<Control>,
}

impl Outlet {
    /// Takes a new connection: returns the frames to write on it first
    /// (`first`, then those the client lacks), or nothing when the client's
    /// resume point is impossible (reported).
    fn attach(
        &mut self,
        attachment: Attachment,
        replay: &mut ReplayBuffer<Bytes>,
        exit_seq: Option<u64>,
    ) -> Option<Vec<Bytes>> {
        let Attachment {
            writer,
            generation,
            first,
            replay_from,
        } = attachment;
        let mut out = Vec::new();
        if let Some(from) = replay_from {
            match replay.replay_after(from) {
                Ok(missing) => out = missing,
                Err(error) => {
                    // On the new connection, so the client hears why.
                    self.link = Some((writer, generation));
                    self.post
                        .report(WriterEvent::Violation(format!("cannot resume: {error}")));
                    return None;
                }
            }
            if exit_seq.is_some_and(|exit| replay.acked() >= exit) {
                self.post.report(WriterEvent::ExitAcked);
            }
        }
        if let Some(first) = first {
            out.insert(0, codec::encode(&first).into());
        }
        self.link = Some((writer, generation));
        Some(out)
    }

    /// Writes one frame on the current connection, if there is one. An order
    /// that replaces or drops the connection abandons a write it does not
    /// take (a dead connection can block for minutes); other orders wait
    /// their turn.
    async fn write(&mut self, bytes: Bytes, flush: bool) {
        let Some((writer, generation)) = self.link.as_mut() else {
            return;
        };
        let generation = *generation;
        let outcome = {
            let write = async {
                writer.feed(bytes).await?;
                if flush {
                    writer.flush().await?;
                }
                Ok::<(), TransportError>(())
            };
            tokio::pin!(write);
            loop {
                tokio::select! {
                    result = &mut write => break Some(result),
                    order = self.post.next_order() => match order {
                        Some(order @ (Control::Attach(_) | Control::Release | Control::Close)) => {
                            queue_order(&mut self.deferred, order);
                            break None;
                        }
                        Some(order) => queue_order(&mut self.deferred, order),
                        None => break None,
                    },
                }
            }
        };
        match outcome {
            Some(Ok(())) => {}
            Some(Err(error)) => {
                self.link = None;
                self.post.report(WriterEvent::Lost {
                    generation,
                    reason: format!("transport error: {error}"),
                });
            }
            None => self.link = None,
        }
    }
}

async fn close(link: Option<(FrameWriter, u64)>) {
    if let Some((mut writer, _)) = link {
        let _ = tokio::time::timeout(CLOSE_TIMEOUT, async {
            let _ = writer.flush().await;
            let _ = writer.close().await;
        })
        .await;
    }
}

/// Runs the command, turns its end (return value, error or panic) into the
/// exit frame, and queues it after everything the command wrote.
async fn run_command(command: Arc<dyn Command>, ctx: Context) {
    let outcome = AssertUnwindSafe(command.run(ctx.clone()))
        .catch_unwind()
        .await;
    // Polled by the session loop, which reads this before it handles the
    // next interrupt.
    ctx.shared.returned.store(true, Ordering::Release);
    // Boxed: the task holds the command for the session's whole life, and
    // should not also hold room for these final writes.
    Box::pin(report_outcome(ctx, outcome)).await;
}

/// Writes why the command failed, if it did, then queues the exit frame.
async fn report_outcome(ctx: Context, outcome: std::thread::Result<Outcome>) {
    let status = match outcome {
        Ok(Outcome::Exit(status)) => status,
        Ok(Outcome::Failed(message)) => failed(&ctx, 1, &message).await,
        Ok(Outcome::FailedWith(status, message)) => {
            let status = crate::outcome::failure_status(status);
            failed(&ctx, status, &message).await
        }
        Err(panic) => {
            let what = panic
                .downcast_ref::<&str>()
                .map(|s| (*s).to_owned())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown panic".into());
            tracing::error!(panic = %said(&what), "command panicked");
            let message = "error: the command failed unexpectedly on the server (internal error)\n";
            let _ = ctx.stderr().write_all(message.as_bytes()).await;
            1
        }
    };
    let _ = ctx.shared.send(ServerFrame::Exit(Exit { status })).await;
}

/// Shows why the command failed on the client's stderr; `status`.
async fn failed(ctx: &Context, status: u8, message: &str) -> u8 {
    // It may quote the client (a refused request's message, say).
    tracing::info!(message = %said(message), status, "command failed");
    let _ = ctx
        .stderr()
        .write_all(format!("error: {message}\n").as_bytes())
        .await;
    status
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_clients_text_is_logged_with_hidden_characters_escaped_and_cut_short() {
        // A forged line, a reversed word, a zero-width space and a soft
        // hyphen: each shown as its escape.
        assert_eq!(
            said("ok\nINFO forged\u{202e}txt.exe\u{200b}x\u{ad}y"),
            "ok\\nINFO forged\\u{202e}txt.exe\\u{200b}x\\u{ad}y"
        );
        assert_eq!(
            said(&"é".repeat(1000)),
            format!("{}…", "é".repeat(LOGGED_CHARS))
        );
    }

    #[tokio::test]
    async fn orders_arrive_in_order_and_end_after_the_queued_ones() {
        let post = Post::default();
        post.order(Control::Acked(1));
        post.order(Control::Release);
        post.end_orders();
        assert!(matches!(post.next_order().await, Some(Control::Acked(1))));
        assert!(matches!(post.next_order().await, Some(Control::Release)));
        assert!(post.next_order().await.is_none());
    }

    #[tokio::test]
    async fn an_order_or_mail_wakes_its_waiting_taker() {
        let post = Arc::new(Post::default());
        let writer = tokio::spawn({
            let post = post.clone();
            async move { matches!(post.next_order().await, Some(Control::Release)) }
        });
        let session_loop = tokio::spawn({
            let post = post.clone();
            async move { matches!(post.next_mail().await, Mail::Writer(WriterEvent::ExitAcked)) }
        });
        tokio::task::yield_now().await;
        post.order(Control::Release);
        post.report(WriterEvent::ExitAcked);
        assert!(writer.await.unwrap());
        assert!(session_loop.await.unwrap());
    }

    #[tokio::test]
    async fn a_taker_dropped_while_waiting_loses_nothing() {
        let post = Post::default();
        // Wait, give up, then an order comes: the next taker gets it.
        let gave_up = tokio::time::timeout(Duration::from_millis(10), post.next_order()).await;
        assert!(gave_up.is_err());
        post.order(Control::Acked(7));
        assert!(matches!(post.next_order().await, Some(Control::Acked(7))));
    }

    #[test]
    fn orders_after_the_writer_stopped_and_mail_after_the_loop_ended_are_refused() {
        let post = Post::default();
        post.order(Control::Acked(1));
        post.stop_orders();
        post.order(Control::Acked(2));
        assert!(post.queues().orders.is_empty());
        post.report(WriterEvent::ExitAcked);
        assert_eq!(post.close_mail().len(), 1, "mail not taken is handed back");
        assert!(post.mail(Mail::Writer(WriterEvent::ExitAcked)).is_err());
        assert!(post.close_mail().is_empty());
    }

    fn our_ack(seq: u64) -> Control {
        Control::Send(Box::new(ServerFrame::Ack(Ack { seq })))
    }

    fn refusal() -> Control {
        Control::Send(Box::new(ServerFrame::Detached(Detached {
            accepted: false,
            message: Some("no".into()),
            keep_secs: 0,
            token: None,
        })))
    }

    /// What a queue holds, in order, as short names.
    fn shapes(queue: &VecDeque<Control>) -> Vec<String> {
        queue
            .iter()
            .map(|order| match order {
                Control::Acked(seq) => format!("acked {seq}"),
                Control::Send(frame) => match &**frame {
                    ServerFrame::Ack(ack) => format!("ack {}", ack.seq),
                    ServerFrame::Detached(_) => "refusal".into(),
                    _ => "send".into(),
                },
                Control::Release => "release".into(),
                _ => "other".into(),
            })
            .collect()
    }

    #[test]
    fn acknowledgements_and_refusals_that_pile_up_are_merged() {
        // A client flooding acknowledgements and `detach` while our write
        // is blocked: each kind is queued once, with the highest count.
        let mut queue = VecDeque::new();
        for seq in 1..=10_000 {
            queue_order(&mut queue, Control::Acked(seq));
            queue_order(&mut queue, our_ack(seq * 2));
            queue_order(&mut queue, refusal());
        }
        assert_eq!(shapes(&queue), ["acked 10000", "ack 20000", "refusal"]);
    }

    #[test]
    fn merging_never_crosses_another_order() {
        // An acknowledgement after `release` belongs to what comes after it
        // (a new connection): it must not move ahead of it.
        let mut queue = VecDeque::new();
        queue_order(&mut queue, Control::Acked(5));
        queue_order(&mut queue, our_ack(1));
        queue_order(&mut queue, Control::Release);
        queue_order(&mut queue, Control::Acked(3));
        queue_order(&mut queue, our_ack(2));
        queue_order(&mut queue, Control::Acked(4));
        assert_eq!(
            shapes(&queue),
            ["acked 5", "ack 1", "release", "acked 4", "ack 2"]
        );
    }

    #[tokio::test]
    async fn the_writer_gets_merged_orders_from_the_post() {
        let post = Post::default();
        for seq in [3, 9, 4] {
            post.order(Control::Acked(seq));
        }
        post.order(Control::Release);
        assert!(matches!(post.next_order().await, Some(Control::Acked(9))));
        assert!(matches!(post.next_order().await, Some(Control::Release)));
    }
}
