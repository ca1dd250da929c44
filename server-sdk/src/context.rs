//! What a command sees of its session: arguments, client facts, output streams
//! and client resources.

use std::fmt;
use std::io;
use std::sync::Arc;

use terminalwire_protocol::frame::{self as wire, Operation, Reply};

use crate::session::Shared;

/// Facts the client reported about itself.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ClientInfo {
    /// Client program name.
    pub name: String,
    /// Client program version.
    pub version: String,
    /// Operating system (`linux`, `macos`, `windows`, ...).
    pub os: String,
    /// Operating-system version, when known.
    pub os_version: Option<String>,
    /// CPU architecture.
    pub arch: String,
    /// The authority the client computed from the URL it was given.
    pub authority: String,
    /// The fingerprint (`SHA256:...`) of the client's device key for this
    /// server: a stable id of the device, proven by the secure handshake.
    /// `None` for a client that has no device key (none speaks to this SDK
    /// today; Terminalwire's published v1 clients would be such clients):
    /// such a client cannot be told apart from a copy of itself.
    pub device: Option<String>,
    /// The absolute path of this authority's storage folder on the client,
    /// which the app may always use (see [`Context::storage_path`]).
    pub storage: Option<String>,
    /// The app's web origin as the client reached it (`https://host[:port]`,
    /// `http://` over plain WebSockets): the base of the app's own pages,
    /// which the client opens in the browser without a grant. `None` when
    /// the client has none (a Unix socket) or did not say (an older client).
    pub origin: Option<String>,
    /// What the session can do beyond running a command, as the client and
    /// this server agreed when it started (an older client may lack some).
    pub features: ClientFeatures,
}

/// What a client's session can do beyond running a command, as the client
/// and the server agreed when it started. In the app's terms, not the wire
/// protocol's: another protocol's client (Terminalwire's published v1, one
/// day) would have none of them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ClientFeatures {
    /// The session survives a lost connection, and its user can detach from
    /// it and re-attach later ([`crate::Config::resume_grace`] not zero).
    pub resumable: bool,
    /// A read of input the app gives up (a `timeout` around
    /// [`crate::resources::Stdin::read_line`], say) is cancelled on the
    /// client, which stops waiting for the user. Without it the client's
    /// read goes on; what it brings is kept for the app's next read all
    /// the same.
    pub cancels_reads: bool,
}

#[cfg(test)]
impl ClientInfo {
    /// A client of this machine with the device key `device`.
    pub(crate) fn for_test(device: Option<&str>) -> ClientInfo {
        ClientInfo {
            name: "terminalwire".into(),
            version: "0.1.0".into(),
            os: "linux".into(),
            os_version: None,
            arch: "x86_64".into(),
            authority: "127.0.0.1:8080".into(),
            device: device.map(str::to_owned),
            storage: None,
            origin: None,
            features: ClientFeatures::default(),
        }
    }
}

impl ClientFeatures {
    /// The features of the capabilities both sides agreed on.
    pub(crate) fn agreed(capabilities: &[String]) -> ClientFeatures {
        let has = |name: &str| capabilities.iter().any(|capability| capability == name);
        ClientFeatures {
            resumable: has(terminalwire_protocol::resume::CAPABILITY),
            cancels_reads: has(wire::CANCEL_CAPABILITY),
        }
    }
}

/// The kind of file behind one of the client's standard streams.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum StreamKind {
    /// A terminal.
    Tty,
    /// A pipe or socket.
    Pipe,
    /// A regular file.
    File,
    /// `/dev/null` or closed.
    Null,
    /// Anything else.
    Other,
    /// The client did not say (a client of another protocol: Terminalwire's
    /// published v1 clients send no terminal facts). Treat it like a pipe:
    /// no colour, no prompts that need a terminal.
    Unknown,
}

/// Colour support of one of the client's streams.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
#[non_exhaustive]
pub enum ColorLevel {
    /// No colour.
    None,
    /// 16 colours.
    Ansi16,
    /// 256 colours.
    Ansi256,
    /// 24-bit colour.
    Truecolor,
}

/// One of the client's standard streams.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct StreamInfo {
    /// What it is connected to.
    pub kind: StreamKind,
    /// Terminal size as (columns, rows), for a terminal: the size when the
    /// session started, never updated. For the size now (after the user
    /// resized the window) use [`Context::terminal_size`], which
    /// [`Context::resized`] also keeps track of.
    pub size: Option<(u16, u16)>,
    /// Colour support.
    pub color: ColorLevel,
}

impl StreamInfo {
    /// Whether the stream is a terminal.
    pub fn is_tty(&self) -> bool {
        self.kind == StreamKind::Tty
    }
}

impl std::fmt::Display for StreamKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            StreamKind::Tty => "a terminal",
            StreamKind::Pipe => "a pipe",
            StreamKind::File => "a file",
            StreamKind::Null => "/dev/null",
            StreamKind::Other => "something else",
            StreamKind::Unknown => "unknown",
        })
    }
}

impl std::fmt::Display for ColorLevel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ColorLevel::None => "no colour",
            ColorLevel::Ansi16 => "16 colours",
            ColorLevel::Ansi256 => "256 colours",
            ColorLevel::Truecolor => "24-bit colour",
        })
    }
}

/// For people: `a terminal, 80x24, 24-bit colour`, `a pipe, no colour`.
impl std::fmt::Display for StreamInfo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.kind)?;
        if let Some((columns, rows)) = self.size {
            write!(f, ", {columns}x{rows}")?;
        }
        write!(f, ", {}", self.color)
    }
}

/// The client's terminal.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct TerminalInfo {
    /// Standard input.
    pub stdin: StreamInfo,
    /// Standard output.
    pub stdout: StreamInfo,
    /// Standard error.
    pub stderr: StreamInfo,
    /// `TERM`, when set.
    pub term: Option<String>,
}

impl From<&wire::StreamFacts> for StreamInfo {
    fn from(facts: &wire::StreamFacts) -> Self {
        StreamInfo {
            kind: match facts.kind {
                wire::StreamKind::Tty => StreamKind::Tty,
                wire::StreamKind::Pipe => StreamKind::Pipe,
                wire::StreamKind::File => StreamKind::File,
                wire::StreamKind::Null => StreamKind::Null,
                wire::StreamKind::Other => StreamKind::Other,
            },
            size: facts.size.map(|size| (size.cols, size.rows)),
            color: match facts.color {
                wire::ColorLevel::None => ColorLevel::None,
                wire::ColorLevel::Ansi16 => ColorLevel::Ansi16,
                wire::ColorLevel::Ansi256 => ColorLevel::Ansi256,
                wire::ColorLevel::Truecolor => ColorLevel::Truecolor,
            },
        }
    }
}

impl From<&wire::TerminalFacts> for TerminalInfo {
    fn from(facts: &wire::TerminalFacts) -> Self {
        TerminalInfo {
            stdin: (&facts.stdin).into(),
            stdout: (&facts.stdout).into(),
            stderr: (&facts.stderr).into(),
            term: facts.term.clone(),
        }
    }
}

/// Fixed facts of a session, shared by every clone of its [`Context`].
#[derive(Debug)]
pub(crate) struct SessionInfo {
    pub(crate) session_id: String,
    pub(crate) program_name: String,
    pub(crate) args: Vec<String>,
    pub(crate) client: ClientInfo,
    pub(crate) terminal: TerminalInfo,
    /// The app's values from the connection that started the session.
    pub(crate) extensions: axum::http::Extensions,
}

/// A key press on the client's terminal.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Key {
    /// A character (`a`, `A`, ` `) or a name (`enter`, `tab`, `backspace`,
    /// `esc`, `up`, `down`, `left`, `right`, `home`, `end`, `page_up`,
    /// `page_down`, `delete`, `insert`, `f1`..`f12`).
    pub key: String,
    /// Control was held.
    pub ctrl: bool,
    /// Alt was held.
    pub alt: bool,
    /// Shift was held (for named keys).
    pub shift: bool,
}

/// A client resource request failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ResourceError {
    /// The user's entitlements do not allow it. `denial` says what was
    /// refused and the command the user can run to allow it.
    #[error("denied by the client: {message}")]
    Denied {
        /// The client's explanation.
        message: String,
        /// Details, when the client gave them.
        denial: Option<Box<Denial>>,
    },
    /// The target does not exist.
    #[error("not found: {message}")]
    NotFound {
        /// The client's explanation.
        message: String,
    },
    /// The target already exists.
    #[error("already exists: {message}")]
    Exists {
        /// The client's explanation.
        message: String,
    },
    /// The directory is not empty.
    #[error("not empty: {message}")]
    NotEmpty {
        /// The client's explanation.
        message: String,
    },
    /// The request or its answer is over a limit.
    #[error("too large: {message}")]
    TooLarge {
        /// The explanation.
        message: String,
    },
    /// The client's operating system reported an error.
    #[error("I/O error on the client: {message}")]
    Io {
        /// The client's explanation.
        message: String,
    },
    /// The request was not valid (bad path, bad argument, no terminal, ...).
    #[error("invalid request: {message}")]
    Invalid {
        /// The client's explanation.
        message: String,
    },
    /// The client cannot do it: it does not implement the operation, or
    /// the operation needs what the client lacks here. A password, raw mode
    /// or a key read when the client's stdin is not a terminal (the user
    /// piped or redirected the command's input) fails with this variant,
    /// and a message that says so and what the user can do.
    #[error("{message}")]
    Unsupported {
        /// What could not be done and why, in a sentence of its own (the
        /// client's, or the SDK's for a missing terminal).
        message: String,
    },
    /// The client answered with another error code.
    #[error("client error ({code}): {message}")]
    Other {
        /// The code as received.
        code: String,
        /// The client's explanation.
        message: String,
    },
    /// The client answered with a reply of the wrong shape.
    #[error("the client sent an unexpected reply")]
    UnexpectedReply,
    /// The session ended before the answer arrived.
    #[error("the client disconnected")]
    Disconnected,
}

impl ResourceError {
    /// `self`, with a message that says what happened and what to do when
    /// the client refused to `what` (`read a password`, ...) because its
    /// stdin, of kind `stdin`, is not a terminal. Other errors, and a
    /// client that did not tell what its stdin is, are left as they are.
    pub(crate) fn for_stdin(self, what: &str, stdin: StreamKind) -> ResourceError {
        match self {
            ResourceError::Unsupported { .. }
                if !matches!(stdin, StreamKind::Tty | StreamKind::Unknown) =>
            {
                ResourceError::Unsupported {
                    message: format!(
                        "cannot {what}: stdin is not a terminal but {stdin} (the command's \
                         input is piped or redirected); run the command in a terminal, \
                         without redirecting its input"
                    ),
                }
            }
            other => other,
        }
    }

    /// What was refused, for a denied request whose client gave details.
    pub fn denial(&self) -> Option<&Denial> {
        match self {
            ResourceError::Denied {
                denial: Some(denial),
                ..
            } => Some(denial),
            _ => None,
        }
    }

    /// The command that would allow a denied request, if the client gave one.
    pub fn grant_command(&self) -> Option<&str> {
        match self {
            ResourceError::Denied {
                denial: Some(denial),
                ..
            } => denial.command.as_deref(),
            _ => None,
        }
    }
}

/// What the client's entitlements refused.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Denial {
    /// `path`, `env` or `browser`.
    pub resource: String,
    /// What was asked: `read`, `write`, `launch`, ...
    pub action: String,
    /// The resolved path, variable name or URL.
    pub target: String,
    /// Why, in words.
    pub reason: String,
    /// The command the user can run to allow it; `None` when it can never be
    /// granted.
    pub command: Option<String>,
}

impl From<wire::OpError> for ResourceError {
    fn from(error: wire::OpError) -> Self {
        let message = error.message;
        match error.code {
            wire::ErrorCode::Denied => ResourceError::Denied {
                message,
                denial: error.denial.map(|denial| {
                    Box::new(Denial {
                        resource: denial.resource,
                        action: denial.action,
                        target: denial.target,
                        reason: denial.reason,
                        command: denial.command,
                    })
                }),
            },
            wire::ErrorCode::NotFound => ResourceError::NotFound { message },
            wire::ErrorCode::Exists => ResourceError::Exists { message },
            wire::ErrorCode::NotEmpty => ResourceError::NotEmpty { message },
            wire::ErrorCode::TooLarge => ResourceError::TooLarge { message },
            wire::ErrorCode::Io => ResourceError::Io { message },
            wire::ErrorCode::Invalid => ResourceError::Invalid { message },
            wire::ErrorCode::Unsupported => ResourceError::Unsupported { message },
            other => ResourceError::Other {
                code: other.to_string(),
                message,
            },
        }
    }
}

/// The session of one client, handed to the app's command.
///
/// Cheap to clone; all clones talk to the same client.
///
/// # Blocking
///
/// The command runs inside its session's task: a call that blocks the
/// thread (`std::thread::sleep`, a synchronous database driver, long
/// computations) also holds up the output it wrote before, the session's
/// heartbeats (a minute of it and the client calls the server silent) and
/// the client's Ctrl-C. Run such work with `tokio::task::spawn_blocking`.
///
/// # Giving up a request
///
/// Reads of the user's input ([`read_line`](Context::read_line),
/// [`read_password`](crate::resources::Stdin::read_password), [`read_key`](Context::read_key),
/// the [`stdin`](Context::stdin) reads) may be given up, by
/// `tokio::time::timeout` or `select!`: the client stops the read if it
/// has not started on any input (its prompt stays on the screen). Input it
/// took all the same is not lost: bytes and keys go to the command's next
/// byte or key read, a line to the next line read with the same prompt (a
/// line read with another prompt drops it: it answered another question),
/// and a password to none (the next password read asks again). A read waits
/// for the reads given up before it to be answered: on a client that knows
/// `cancel`, as soon as it hears of it, unless the read had started on a
/// line (then at its end).
///
/// Other requests (file operations, ...) still run on the client when
/// dropped, and their answers are ignored: a dropped write may have
/// written. Wait for their answers, or end the command.
#[derive(Clone)]
pub struct Context {
    pub(crate) shared: Arc<Shared>,
    pub(crate) info: Arc<SessionInfo>,
}

impl fmt::Debug for Context {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Context")
            .field("session_id", &self.info.session_id)
            .finish_non_exhaustive()
    }
}

impl Context {
    /// The arguments the user typed after the program name.
    pub fn args(&self) -> &[String] {
        &self.info.args
    }

    /// The program name the user typed (a launcher's name, or `terminalwire URL`).
    pub fn program_name(&self) -> &str {
        &self.info.program_name
    }

    /// Facts about the client program and machine.
    pub fn client(&self) -> &ClientInfo {
        &self.info.client
    }

    /// Facts about the client's terminal, as the client reported them when
    /// the session started: what each stream is, colours, `TERM`. They do
    /// not change; in particular `ctx.terminal().stdout.size` is the size
    /// at the start. For the current size, use
    /// [`terminal_size`](Context::terminal_size).
    pub fn terminal(&self) -> &TerminalInfo {
        &self.info.terminal
    }

    /// A value of type `T` the app passed in with the connection that
    /// started this session ([`Terminal::upgrade_with`](crate::Terminal::upgrade_with),
    /// [`Terminal::serve_with`](crate::Terminal::serve_with)): the peer's
    /// address, a header of the WebSocket upgrade, a user the app's own
    /// middleware authenticated, ... `None` when it passed none of that type
    /// (`Terminal::route` passes none).
    ///
    /// These are the values of the connection that *started* the session,
    /// for its whole life: when the client resumes the session on a new
    /// connection (after a network change, or re-attaching), the new
    /// connection's values are not seen. Check per-connection facts (an
    /// address allow-list) when the connection is upgraded, where the app
    /// can refuse it.
    pub fn extension<T: Clone + Send + Sync + 'static>(&self) -> Option<&T> {
        self.info.extensions.get::<T>()
    }

    /// This session's id (also in the server's logs).
    pub fn session_id(&self) -> &str {
        &self.info.session_id
    }

    /// The client's standard output.
    pub fn stdout(&self) -> Output {
        Output {
            ctx: self.clone(),
            stream: 0,
        }
    }

    /// The client's standard error.
    pub fn stderr(&self) -> Output {
        Output {
            ctx: self.clone(),
            stream: 1,
        }
    }

    /// Reads one line from the client's standard input (without its line
    /// ending), showing `prompt` on the client's stderr first. `None` at end
    /// of input. Same as `ctx.stdin().read_line(prompt)`.
    pub async fn read_line(&self, prompt: Option<&str>) -> Result<Option<String>, ResourceError> {
        self.stdin().read_line(prompt).await
    }

    /// The client's standard input: lines, passwords, raw chunks.
    pub fn stdin(&self) -> crate::resources::Stdin {
        crate::resources::Stdin::new(self.clone())
    }

    /// Files on the client, within the user's entitlements.
    pub fn file(&self) -> crate::resources::Files {
        crate::resources::Files::new(self.clone())
    }

    /// Directories on the client, within the user's entitlements.
    pub fn dir(&self) -> crate::resources::Dirs {
        crate::resources::Dirs::new(self.clone())
    }

    /// The client's environment variables that the user granted.
    pub fn env(&self) -> crate::resources::Env {
        crate::resources::Env::new(self.clone())
    }

    /// The user's browser, for the app's own origin and granted targets.
    pub fn browser(&self) -> crate::resources::Browser {
        crate::resources::Browser::new(self.clone())
    }

    /// `relative` inside this authority's storage folder on the client (a
    /// folder the app may always read and write), such as `notes.txt` or
    /// `exports/today.csv`; `""` or `"."` is the folder itself.
    ///
    /// `None` when the client did not report a storage folder, and for a
    /// name that would leave the folder: one with a `..` component, an
    /// absolute one (`/etc/passwd`, `\\server\share`, `C:\x` or `C:x`), or
    /// one with a NUL byte. `\` counts as a separator there, as on a
    /// Windows client. The name is otherwise kept as given.
    pub fn storage_path(&self, relative: &str) -> Option<String> {
        let storage = self.info.client.storage.as_deref()?;
        if !stays_inside(relative) {
            return None;
        }
        Some(if matches!(relative, "" | ".") {
            storage.to_owned()
        } else {
            format!("{}/{relative}", storage.trim_end_matches('/'))
        })
    }

    /// The address of the app's own page at `path` (`/login`, ...) as the
    /// client reaches the app: its [`origin`](ClientInfo::origin) and the
    /// path, a page the client opens with [`Context::browser`] without a
    /// grant. `None` when the client has no web origin (a Unix socket).
    pub fn web_url(&self, path: &str) -> Option<String> {
        let origin = self.info.client.origin.as_deref()?;
        Some(format!("{origin}/{}", path.trim_start_matches('/')))
    }

    /// Sends one operation and waits for its reply.
    pub(crate) async fn request(&self, op: Operation) -> Result<Reply, ResourceError> {
        self.shared.request(op).await
    }

    /// From now on, Ctrl-C on the client is delivered to
    /// [`interrupted`](Context::interrupted) instead of cancelling the
    /// command (which then exits 130, like a local program).
    pub fn handle_interrupts(&self) {
        // Interrupts until now cancelled the command (or would have): the
        // ones from now on are its to take. Counted before the switch, so
        // one in between still cancels it rather than being lost.
        let before = self.shared.signals().interrupts;
        if !self
            .shared
            .interrupts_handled
            .swap(true, std::sync::atomic::Ordering::AcqRel)
        {
            self.shared
                .take_in(|signals| signals.interrupts_seen = signals.interrupts_seen.max(before));
        }
    }

    /// Refuses to let the user detach from this command (say, while it
    /// waits for a human answer); `reason` is shown to the user who tries.
    /// Commands can be detached by default when the server allows it
    /// ([`Config::detach_keep`](crate::Config::detach_keep)).
    pub fn refuse_detach(&self, reason: impl Into<String>) {
        *self
            .shared
            .detach_refusal
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(reason.into());
    }

    /// Lets the user detach from this command again (after
    /// [`refuse_detach`](Context::refuse_detach)).
    pub fn allow_detach(&self) {
        *self
            .shared
            .detach_refusal
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = None;
    }

    /// Resolves at the next Ctrl-C the user presses on the client (cooked
    /// mode; in raw mode Ctrl-C is a key), or at once for one pressed since
    /// the command last heard of one (or started to handle them): none is
    /// lost while the command is busy between two calls, and several
    /// pressed meanwhile are told as one. Calling it means the command
    /// handles interrupts itself ([`handle_interrupts`](Context::handle_interrupts)).
    /// Once the session has ended it never resolves: a task of its own that
    /// waits on it should also watch [`closed`](Context::closed).
    pub async fn interrupted(&self) {
        self.handle_interrupts();
        // What was taken in when this call began: every waiter wakes for
        // what came after, whoever takes it in first.
        let base = self.shared.signals().interrupts_seen;
        tokio::select! {
            () = self.shared.signal_change(|now| now.interrupts != base) => {}
            () = self.shared.closed.cancelled() => std::future::pending().await,
        }
        self.shared.take_in(|signals| {
            signals.interrupts_seen = signals.interrupts_seen.max(signals.interrupts);
        });
    }

    /// The client terminal's size as (columns, rows), as last reported: the
    /// size at the start, then the one of the latest resize. Use it to lay
    /// out output now (a table cut to the width, a full-screen view).
    ///
    /// Counts as having seen it: [`resized`](Context::resized) then waits
    /// for a newer one. So a loop that redraws on resize reads the size
    /// here and then waits on `resized()`, and misses no resize in between.
    /// `ctx.terminal().stdout.size`, by contrast, is the size when the
    /// session started, never updated, and reading it marks nothing as
    /// seen. Also known when only stdin is a terminal (output piped to a
    /// pager, say), from stdin's terminal; `None` when the client reported
    /// no terminal size at all.
    pub fn terminal_size(&self) -> Option<(u16, u16)> {
        self.shared.take_in(|signals| {
            signals.resizes_seen = signals.resizes;
            signals.size
        })
    }

    /// Waits until the client's terminal changes size, or returns at once
    /// when it did since the command last looked at the size (with
    /// [`terminal_size`](Context::terminal_size) or this); returns the new
    /// size. Once the session has ended it never resolves (see
    /// [`interrupted`](Context::interrupted)).
    pub async fn resized(&self) -> Option<(u16, u16)> {
        let base = self.shared.signals().resizes_seen;
        tokio::select! {
            () = self.shared.signal_change(|now| now.resizes != base) => {}
            () = self.shared.closed.cancelled() => std::future::pending::<()>().await,
        }
        self.terminal_size()
    }

    /// Switches the client's terminal to raw mode (every key goes to the
    /// app, Ctrl-C included) or back to cooked mode. The client restores
    /// cooked mode when the session ends. Fails with
    /// [`ResourceError::Unsupported`] when the client's stdin is not a
    /// terminal (its message says so, and what the user can do).
    pub async fn set_raw_mode(&self, raw: bool) -> Result<(), ResourceError> {
        let mode = if raw {
            wire::TerminalMode::Raw
        } else {
            wire::TerminalMode::Cooked
        };
        let what = if raw {
            "switch the terminal to raw mode"
        } else {
            "switch the terminal back to cooked mode"
        };
        let reply = self.request(Operation::TerminalMode { mode }).await;
        match reply.map_err(|error| error.for_stdin(what, self.info.terminal.stdin.kind))? {
            Reply::Unit => Ok(()),
            _ => Err(ResourceError::UnexpectedReply),
        }
    }

    /// Waits for one key press on the client's terminal. Fails with
    /// [`ResourceError::Unsupported`] when the client's stdin is not a
    /// terminal.
    pub async fn read_key(&self) -> Result<Key, ResourceError> {
        let reply = self.request(Operation::ReadKey).await;
        match reply.map_err(|error| error.for_stdin("read a key", self.info.terminal.stdin.kind))? {
            Reply::Key(key) => Ok(Key {
                key: key.key,
                ctrl: key.ctrl,
                alt: key.alt,
                shift: key.shift,
            }),
            _ => Err(ResourceError::UnexpectedReply),
        }
    }

    /// Resolves when the server begins shutting down. A command may finish
    /// early then; after the server's grace period it is cancelled.
    pub async fn shutdown_requested(&self) {
        self.shared.shutdown.cancelled().await;
    }

    /// Resolves when the session is over: the client went away for good
    /// (the user ended it, or its connection dropped and it did not come
    /// back within [`Config::resume_grace`](crate::Config::resume_grace)),
    /// or the command's exit was sent. The command itself is cancelled
    /// (dropped) when the client goes, so this is for tasks it spawned
    /// with a clone of the context; cleanup in the command belongs in a
    /// `Drop`.
    pub async fn closed(&self) {
        self.shared.closed.cancelled().await;
    }
}

/// Whether `relative`, joined to a folder, names a place inside it: no `..`
/// component, not absolute (no leading `/` or `\`, no Windows drive), no
/// NUL byte. Both `/` and `\` separate components, as on a Windows client.
fn stays_inside(relative: &str) -> bool {
    let separator = |c: char| c == '/' || c == '\\';
    let drive = relative
        .as_bytes()
        .first()
        .is_some_and(u8::is_ascii_alphabetic)
        && relative.as_bytes().get(1) == Some(&b':');
    !relative.starts_with(separator)
        && !drive
        && !relative.contains('\0')
        && !relative.split(separator).any(|component| component == "..")
}

/// A writer on one of the client's output streams.
///
/// Format with `format!` and write with [`print`](Output::print) or
/// [`println`](Output::println) (`write!` cannot be used: its formatting
/// temporaries may not cross an `.await` in a `Send` future). A write returns once the bytes
/// are queued for the client within its flow-control window, so a slow
/// terminal slows the command down instead of filling the server's memory.
#[derive(Debug, Clone)]
pub struct Output {
    ctx: Context,
    stream: usize,
}

impl Output {
    /// Writes all of `bytes`.
    pub async fn write_all(&self, bytes: &[u8]) -> io::Result<()> {
        self.ctx.shared.write_stream(self.stream, bytes).await
    }

    /// Writes a string: `out.print(format!("{n} items\n")).await?`.
    pub async fn print(&self, text: impl AsRef<str>) -> io::Result<()> {
        self.write_all(text.as_ref().as_bytes()).await
    }

    /// Writes a string and a newline.
    pub async fn println(&self, text: impl AsRef<str>) -> io::Result<()> {
        let text = text.as_ref();
        let mut line = String::with_capacity(text.len() + 1);
        line.push_str(text);
        line.push('\n');
        self.write_all(line.as_bytes()).await
    }

    /// Facts about the client's stream behind this writer.
    pub fn info(&self) -> &StreamInfo {
        match self.stream {
            0 => &self.ctx.info.terminal.stdout,
            _ => &self.ctx.info.terminal.stderr,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stream_reads_as_words() {
        let terminal = StreamInfo {
            kind: StreamKind::Tty,
            size: Some((80, 24)),
            color: ColorLevel::Truecolor,
        };
        assert_eq!(terminal.to_string(), "a terminal, 80x24, 24-bit colour");
        let pipe = StreamInfo {
            kind: StreamKind::Pipe,
            size: None,
            color: ColorLevel::None,
        };
        assert_eq!(pipe.to_string(), "a pipe, no colour");
    }
}
