//! A test client for apps (feature `testing`): runs a [`Terminal`]'s command
//! in memory, without a network or the `terminalwire` binary.
//!
//! [`TestClient`] plays the client's part: it opens the session with the
//! same secure handshake and `hello` as the real client, over an in-memory
//! [`Transport`], and the command runs in the SDK's real session code (flow
//! control, requests, exit statuses, error messages). It answers what the
//! command asks as the real client would for a user who granted nothing:
//!
//! - **stdout, stderr**: captured ([`TestOutput::stdout`], [`TestOutput::stderr`]);
//!   prompts of line and password reads go to stderr, as on the client.
//! - **stdin**: the bytes of [`TestClient::stdin`], for lines, chunks and,
//!   on a [`terminal`](TestClient::terminal), passwords; end of input after
//!   them. Without a terminal a password read is refused as the real client
//!   refuses it (stdin is not a terminal).
//! - **files and folders**: inside the [`storage`](TestClient::storage)
//!   folder only, on the disk, as the client's storage folder
//!   ([`Context::storage_path`](crate::Context::storage_path) names paths
//!   in it); the folder itself is the client's, and changing it is
//!   refused as the real client refuses it. Errors of the disk there (no
//!   such file, already exists, not empty, not a file, not a folder) have
//!   the real client's error and words. Every other path is denied by
//!   the real client's own rules for a user who granted nothing (a
//!   [`ResourceError::Denied`](crate::ResourceError::Denied) with its
//!   [`Denial`](crate::Denial) and the same grant command, `~` being the
//!   user's home). Paths in the folder are checked as written, `..`
//!   resolved; a symlink in it is followed (the real client does not), as
//!   the folder is the test's own.
//! - **environment**: the variables given with [`env`](TestClient::env);
//!   any other is denied as the real client denies a variable not granted.
//! - **browser**: opening a page of the app's own origin succeeds and is
//!   recorded ([`TestOutput::opened`]); any other URL is denied as the
//!   real client denies a target not granted.
//! - **raw mode and keys**: on a terminal, raw mode is accepted and each key
//!   read takes the next of [`keys`](TestClient::keys) (once they run out a
//!   read fails with an I/O error); without a terminal both are refused as
//!   the real client refuses them.
//!
//! Not simulated: Ctrl-C, resizes, detaching and reconnecting, consent
//! prompts, storage quotas, the mode ceilings of the storage folder, the
//! client's limit of browser launches a minute. The session is bounded by a deadline
//! ([`TestClient::deadline`], 30 s by default; on a paused tokio clock it
//! counts in paused time): a command still running then fails the test.
//!
//! ```
//! use terminalwire_server::{Context, Terminal, testing::TestClient};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let terminal = Terminal::new(|ctx: Context| async move {
//!     let name = ctx.read_line(Some("Name? ")).await?.unwrap_or_default();
//!     ctx.stdout().println(format!("Hello, {name}!")).await?;
//!     anyhow::Ok(())
//! });
//! let out = TestClient::new().stdin(b"Ada\n").run(&terminal).await;
//! assert_eq!(out.status, 0);
//! assert_eq!(out.stdout_text(), "Hello, Ada!\n");
//! assert_eq!(out.stderr_text(), "Name? ");
//! # }
//! ```

#![allow(
    clippy::result_large_err,
    reason = "a request's answer (a reply or the client's error) is built once and sent"
)]

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::io::{self, Write as _};
use std::path::{Component, Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use axum::http::Extensions;
use bytes::Bytes;
use futures_util::SinkExt;
use terminalwire_policy::{
    Action, ControlArea, Denial as PolicyDenial, DenialReason, Entitlements, Home, Policy, Resource,
};
use terminalwire_protocol::frame::{
    ClientFrame, ColorLevel as WireColor, Data, Denial, DirEntry, EntryKind, ErrorCode, Hello, Key,
    Metadata, OpError, Operation, Program, Reply, Response, ServerFrame, Software, StreamFacts,
    StreamKind, TerminalFacts, TerminalSize, WindowAdjust,
};
use terminalwire_protocol::secure::{Initiator, StaticKey};
use terminalwire_protocol::{DEFAULT_MAX_CHUNK, DEFAULT_WINDOW, SUPPORTED_VERSIONS, codec};
use tokio::sync::mpsc;
use tokio_util::sync::PollSender;

use crate::ColorLevel;
use crate::Terminal;
use crate::transport::{FrameReader, FrameWriter, Inbound, Transport, TransportError};

/// Most bytes of one file or stdin read answer: the answer must fit in a frame.
const MAX_READ: u32 = 512 * 1024;

/// The longest line a line read returns, as the real client's.
use crate::resources::MAX_LINE;

/// How often the client shows it is alive (the real client's WebSocket pings).
const HEARTBEAT: Duration = Duration::from_secs(15);

/// A scripted client for one run of a command. See the [module](self) docs.
///
/// A client is one machine: its clones have the same device key
/// ([`ClientInfo::device`](crate::ClientInfo::device)), so that a login
/// saved in the storage folder by one run is valid in the next, as on a
/// real machine:
///
/// ```no_run
/// # use terminalwire_server::{Terminal, testing::TestClient};
/// # async fn example(terminal: Terminal, folder: &std::path::Path) {
/// let machine = TestClient::new().storage(folder);
/// let login = machine.clone().args(["login", "--password-stdin"]).stdin(b"secret\n");
/// assert_eq!(login.run(&terminal).await.status, 0);
/// let whoami = machine.clone().args(["whoami"]).run(&terminal).await;
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct TestClient {
    program: String,
    args: Vec<String>,
    stdin: Vec<u8>,
    env: BTreeMap<String, String>,
    storage: Option<PathBuf>,
    terminal: Option<(u16, u16)>,
    color: ColorLevel,
    keys: Vec<String>,
    origin: String,
    deadline: Duration,
    /// Values for [`Context::extension`](crate::Context::extension).
    extensions: Extensions,
    /// The device key, made at the first run and shared by clones.
    device: Arc<OnceLock<StaticKey>>,
}

impl Default for TestClient {
    fn default() -> Self {
        TestClient::new()
    }
}

impl TestClient {
    /// A client run as `app` with no arguments, empty piped stdin, no
    /// terminal, no storage folder, no variables, at `https://app.test`.
    pub fn new() -> Self {
        TestClient {
            program: "app".into(),
            args: Vec::new(),
            stdin: Vec::new(),
            env: BTreeMap::new(),
            storage: None,
            terminal: None,
            color: ColorLevel::None,
            keys: Vec::new(),
            origin: "https://app.test".into(),
            deadline: Duration::from_secs(30),
            extensions: Extensions::new(),
            device: Arc::default(),
        }
    }

    /// The arguments after the program name ([`Context::args`](crate::Context::args)).
    pub fn args<I: IntoIterator<Item = S>, S: Into<String>>(mut self, args: I) -> Self {
        self.args = args.into_iter().map(Into::into).collect();
        self
    }

    /// The program name the user typed ([`Context::program_name`](crate::Context::program_name)).
    pub fn program(mut self, name: impl Into<String>) -> Self {
        self.program = name.into();
        self
    }

    /// Everything the command can read from stdin.
    pub fn stdin(mut self, bytes: impl AsRef<[u8]>) -> Self {
        self.stdin = bytes.as_ref().to_vec();
        self
    }

    /// A variable of the client's environment, granted to the app.
    pub fn env(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.env.insert(name.into(), value.into());
        self
    }

    /// The client's storage folder for the app: an existing folder (a
    /// temporary one), whose files the command reads and writes for real.
    pub fn storage(mut self, folder: impl AsRef<Path>) -> Self {
        self.storage = Some(folder.as_ref().to_owned());
        self
    }

    /// stdin, stdout and stderr are a terminal of `columns` x `rows`
    /// (`TERM=xterm-256color`); without it all three are pipes.
    pub fn terminal(mut self, columns: u16, rows: u16) -> Self {
        self.terminal = Some((columns, rows));
        self
    }

    /// The colours of stdout and stderr (none by default).
    pub fn color(mut self, color: ColorLevel) -> Self {
        self.color = color;
        self
    }

    /// Keys for the command's key reads, in order, on a
    /// [`terminal`](TestClient::terminal): a character (`a`) or a key name
    /// (`enter`, `up`, ...; see [`Key`](crate::Key)), with `ctrl+`, `alt+`
    /// or `shift+` before it for a modifier (`ctrl+c`).
    pub fn keys<I: IntoIterator<Item = S>, S: Into<String>>(mut self, keys: I) -> Self {
        self.keys = keys.into_iter().map(Into::into).collect();
        self
    }

    /// The app's web origin as the client reaches it (`https://app.test` by
    /// default): [`Context::web_url`](crate::Context::web_url) builds on it.
    pub fn origin(mut self, origin: impl Into<String>) -> Self {
        self.origin = origin.into().trim_end_matches('/').to_owned();
        self
    }

    /// A value the command reads with
    /// [`Context::extension`](crate::Context::extension), as the app's
    /// route passes it with [`Terminal::upgrade_with`].
    pub fn extension<T: Clone + Send + Sync + 'static>(mut self, value: T) -> Self {
        self.extensions.insert(value);
        self
    }

    /// The longest the session may take (30 s by default).
    pub fn deadline(mut self, deadline: Duration) -> Self {
        self.deadline = deadline;
        self
    }

    /// Runs `terminal`'s command to its end and returns what the client saw.
    ///
    /// # Panics
    ///
    /// When the session outlives the [deadline](TestClient::deadline), the
    /// storage folder does not exist, or the session breaks off without an
    /// exit status (a bug of the SDK or of this client, not of the app).
    pub async fn run(self, terminal: &Terminal) -> TestOutput {
        let deadline = self.deadline;
        let (to_server, inbox) = mpsc::unbounded_channel();
        let (outbox, from_server) = mpsc::channel(8);
        let transport = MemoryTransport { outbox, inbox };
        let session = terminal.serve_with(transport, self.extensions.clone());
        let client = self.drive(to_server, from_server);
        let both = async { tokio::join!(session, client).1 };
        match tokio::time::timeout(deadline, both).await {
            Ok(Ok(output)) => output,
            Ok(Err(error)) => panic!("the test session failed: {error}"),
            Err(_) => panic!("the command did not finish within {deadline:?}"),
        }
    }

    /// The client's side of the session.
    async fn drive(
        self,
        to_server: mpsc::UnboundedSender<Inbound>,
        mut from_server: mpsc::Receiver<Bytes>,
    ) -> Result<TestOutput, String> {
        let storage = match &self.storage {
            Some(folder) => Some(
                std::fs::canonicalize(folder)
                    .map_err(|error| format!("the storage folder {}: {error}", folder.display()))?,
            ),
            None => None,
        };
        let send = |bytes: Vec<u8>| {
            to_server
                .send(Inbound::Frame(bytes))
                .map_err(|_| "the server closed the session".to_owned())
        };
        let device = match self.device.get() {
            Some(device) => device.clone(),
            None => {
                let device = StaticKey::generate().map_err(failed("device key"))?;
                self.device.get_or_init(|| device).clone()
            }
        };
        let (mut initiator, first) = Initiator::start(&device).map_err(failed("handshake"))?;
        send(first)?;
        let second = from_server.recv().await.ok_or("no handshake answer")?;
        initiator
            .read_response(&second)
            .map_err(failed("handshake"))?;
        let (third, channel) = initiator.finish().map_err(failed("handshake"))?;
        send(third)?;
        let (mut sealer, mut opener) = channel.split();
        let mut client = Client {
            entitlements: entitlements(&self.origin)?,
            storage,
            stdin: VecDeque::from(self.stdin.clone()),
            keys: self.keys.iter().cloned().collect(),
            output: TestOutput::default(),
            writes: HashMap::new(),
            next_handle: 1,
        };
        let hello = self.hello(client.storage.as_deref());
        send(
            sealer
                .seal(&codec::encode(&ClientFrame::Hello(hello)))
                .map_err(failed("seal"))?,
        )?;
        let mut heartbeat = tokio::time::interval(HEARTBEAT);
        loop {
            let sealed = tokio::select! {
                sealed = from_server.recv() => sealed.ok_or("the session ended without an exit status")?,
                _ = heartbeat.tick() => {
                    let _ = to_server.send(Inbound::Heartbeat);
                    continue;
                }
            };
            let frame = opener.open(&sealed).map_err(failed("open"))?;
            let answer = match codec::decode::<ServerFrame>(&frame).map_err(failed("decode"))? {
                ServerFrame::Data(Data { sid, bytes }) => {
                    match sid.0 {
                        1 => client.output.stdout.extend_from_slice(&bytes),
                        _ => client.output.stderr.extend_from_slice(&bytes),
                    }
                    let bytes = u32::try_from(bytes.len()).unwrap_or(u32::MAX);
                    ClientFrame::Window(WindowAdjust { sid, bytes })
                }
                ServerFrame::Request(request) => {
                    let answer = client.perform(request.op, &self);
                    ClientFrame::Response(match answer {
                        Ok(reply) => Response::ok(request.id, reply),
                        Err(error) => Response::error(request.id, error),
                    })
                }
                ServerFrame::Exit(exit) => {
                    client.output.status = exit.status;
                    return Ok(client.output);
                }
                ServerFrame::Error(error) => {
                    return Err(format!("the server ended the session: {}", error.message));
                }
                ServerFrame::Incompatible(incompatible) => return Err(incompatible.message),
                _ => continue,
            };
            send(
                sealer
                    .seal(&codec::encode(&answer))
                    .map_err(failed("seal"))?,
            )?;
        }
    }

    /// The client's hello.
    fn hello(&self, storage: Option<&Path>) -> Hello {
        let color = match self.color {
            ColorLevel::None => WireColor::None,
            ColorLevel::Ansi16 => WireColor::Ansi16,
            ColorLevel::Ansi256 => WireColor::Ansi256,
            ColorLevel::Truecolor => WireColor::Truecolor,
        };
        let stream = |color| match self.terminal {
            Some((cols, rows)) => StreamFacts {
                kind: StreamKind::Tty,
                size: Some(TerminalSize { cols, rows }),
                color,
            },
            None => StreamFacts {
                kind: StreamKind::Pipe,
                size: None,
                color,
            },
        };
        Hello {
            versions: SUPPORTED_VERSIONS,
            client: Software {
                name: "terminalwire-testing".into(),
                version: env!("CARGO_PKG_VERSION").into(),
            },
            os: std::env::consts::OS.into(),
            os_version: None,
            arch: std::env::consts::ARCH.into(),
            authority: self.origin.split("://").last().unwrap_or("").to_owned(),
            storage: storage.map(|folder| folder.display().to_string()),
            origin: Some(self.origin.clone()),
            program: Program {
                name: self.program.clone(),
                args: self.args.clone(),
            },
            terminal: TerminalFacts {
                stdin: stream(WireColor::None),
                stdout: stream(color),
                stderr: stream(color),
                term: self.terminal.map(|_| "xterm-256color".into()),
            },
            capabilities: ["stdout", "stderr", "exit", "stdin.line"]
                .map(str::to_owned)
                .to_vec(),
            window: DEFAULT_WINDOW,
            max_chunk: DEFAULT_MAX_CHUNK,
        }
    }
}

/// What a command run by a [`TestClient`] left.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct TestOutput {
    /// The exit status the client would exit with.
    pub status: u8,
    /// Everything written to stdout.
    pub stdout: Vec<u8>,
    /// Everything written to stderr, prompts included.
    pub stderr: Vec<u8>,
    /// The URLs the command opened in the browser, in order.
    pub opened: Vec<String>,
}

impl TestOutput {
    /// stdout as text (invalid UTF-8 replaced).
    pub fn stdout_text(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }

    /// stderr as text (invalid UTF-8 replaced).
    pub fn stderr_text(&self) -> String {
        String::from_utf8_lossy(&self.stderr).into_owned()
    }
}

/// The client's state during a run.
struct Client {
    /// The real client's decisions for a user who granted nothing: what
    /// it refuses, and how it words the refusal.
    entitlements: Entitlements,
    /// The storage folder, canonical.
    storage: Option<PathBuf>,
    stdin: VecDeque<u8>,
    keys: VecDeque<String>,
    output: TestOutput,
    /// Streamed writes: handle → (target, bytes so far).
    writes: HashMap<u64, (PathBuf, Vec<u8>)>,
    next_handle: u64,
}

impl Client {
    /// Answers one request.
    fn perform(&mut self, op: Operation, script: &TestClient) -> Result<Reply, OpError> {
        let terminal = script.terminal.is_some();
        let not_terminal = || OpError::new(ErrorCode::Unsupported, "stdin is not a terminal");
        match op {
            Operation::StdinReadLine { prompt } => self.read_line(prompt),
            Operation::StdinReadPassword { .. } if !terminal => Err(OpError::new(
                ErrorCode::Unsupported,
                "stdin is not a terminal, so a password cannot be read without echo",
            )),
            Operation::StdinReadPassword { prompt } => self.read_line(prompt),
            Operation::StdinRead { max } => {
                let n = (max.min(MAX_READ) as usize).min(self.stdin.len());
                let bytes: Vec<u8> = self.stdin.drain(..n).collect();
                let eof = self.stdin.is_empty();
                Ok(Reply::Data {
                    bytes: bytes.into(),
                    eof,
                })
            }
            Operation::TerminalMode { .. } if terminal => Ok(Reply::Unit),
            Operation::ReadKey if terminal => self.read_key(),
            Operation::TerminalMode { .. } | Operation::ReadKey => Err(not_terminal()),
            Operation::EnvGet { name } => match script.env.get(&name) {
                Some(value) => Ok(Reply::Value {
                    value: Some(value.clone()),
                }),
                None => match self.entitlements.check_env(&name) {
                    Err(denial) => Err(denied(denial)),
                    // A variable every app may read (the client's own home).
                    Ok(()) => Ok(Reply::Value { value: None }),
                },
            },
            Operation::BrowserOpen { url } => {
                self.entitlements.check_browser(&url).map_err(denied)?;
                self.output.opened.push(url);
                Ok(Reply::Unit)
            }
            Operation::FileWriteChunk {
                handle,
                offset,
                bytes,
            } => {
                let (_, content) = self.writes.get_mut(&handle).ok_or_else(no_handle)?;
                let offset = usize::try_from(offset).unwrap_or(usize::MAX);
                if content.len() < offset + bytes.len() {
                    content.resize(offset + bytes.len(), 0);
                }
                content[offset..offset + bytes.len()].copy_from_slice(&bytes);
                Ok(Reply::Unit)
            }
            Operation::FileWriteCommit { handle } => {
                let (path, content) = self.writes.remove(&handle).ok_or_else(no_handle)?;
                std::fs::write(&path, content).map_err(|error| fs_error(&path, error))?;
                Ok(Reply::Unit)
            }
            Operation::FileWriteAbort { handle } => {
                self.writes.remove(&handle).ok_or_else(no_handle)?;
                Ok(Reply::Unit)
            }
            op => self.path_operation(op),
        }
    }

    /// Answers a request on a path, inside the storage folder only.
    fn path_operation(&mut self, op: Operation) -> Result<Reply, OpError> {
        let Some(raw) = op.path().map(str::to_owned) else {
            return Err(OpError::new(
                ErrorCode::Unsupported,
                "this client does not support that operation",
            ));
        };
        let about_a_folder = op.names_a_folder();
        let action = if op.only_reads() {
            Action::Read
        } else {
            Action::Write
        };
        let Some(path) = self.inside_storage(&raw) else {
            return Err(self.refused(&raw, action, about_a_folder));
        };
        // The storage folder itself is the client's: only what is in it
        // may change (`mkdir -p` of it has nothing to do).
        if action == Action::Write && Some(&path) == self.storage.as_ref() {
            if let Operation::DirCreate { parents: true, .. } = op {
                return Ok(Reply::Unit);
            }
            return Err(denied(PolicyDenial {
                authority: self.entitlements.authority().clone(),
                resource: Resource::Path,
                action: action.into(),
                target: path.to_string_lossy().into_owned(),
                reason: DenialReason::NeverGrantable(ControlArea::StorageFolder),
                command: None,
            }));
        }
        let failed = |error| fs_error(&path, error);
        let unit = |result: io::Result<()>| result.map(|()| Reply::Unit).map_err(failed);
        match op {
            Operation::FileRead { offset, len, .. } => {
                let content = std::fs::read(&path).map_err(failed)?;
                let start = usize::try_from(offset)
                    .unwrap_or(usize::MAX)
                    .min(content.len());
                let end = start
                    .saturating_add(len.min(MAX_READ) as usize)
                    .min(content.len());
                Ok(Reply::Data {
                    bytes: content[start..end].to_vec().into(),
                    eof: end == content.len(),
                })
            }
            Operation::FileWrite { bytes, .. } => unit(std::fs::write(&path, bytes)),
            Operation::FileAppend { bytes, .. } => unit(
                std::fs::OpenOptions::new()
                    .append(true)
                    .create(true)
                    .open(&path)
                    .and_then(|mut file| file.write_all(&bytes)),
            ),
            Operation::FileDelete { .. } => unit(std::fs::remove_file(&path)),
            Operation::FileExists { .. } => Ok(Reply::Bool {
                value: path.is_file(),
            }),
            Operation::Metadata { .. } => Ok(Reply::Metadata(metadata(&path))),
            Operation::Chmod { mode, .. } => unit(chmod(&path, mode)),
            Operation::DirList { .. } => {
                let mut entries = Vec::new();
                for entry in std::fs::read_dir(&path).map_err(failed)? {
                    let entry = entry.map_err(failed)?;
                    let Ok(name) = entry.file_name().into_string() else {
                        continue;
                    };
                    let kind = entry_kind(&entry.file_type().map_err(failed)?);
                    entries.push(DirEntry { name, kind });
                }
                entries.sort_by(|a, b| a.name.cmp(&b.name));
                Ok(Reply::Entries { entries })
            }
            Operation::DirCreate { parents: true, .. } => unit(std::fs::create_dir_all(&path)),
            Operation::DirCreate { .. } => unit(std::fs::create_dir(&path)),
            Operation::DirExists { .. } => Ok(Reply::Bool {
                value: path.is_dir(),
            }),
            Operation::DirDelete {
                recursive: true, ..
            } => unit(std::fs::remove_dir_all(&path)),
            Operation::DirDelete { .. } => unit(std::fs::remove_dir(&path)),
            Operation::FileWriteOpen { .. } => {
                let handle = self.next_handle;
                self.next_handle += 1;
                self.writes.insert(handle, (path, Vec::new()));
                Ok(Reply::Handle { handle })
            }
            _ => Err(OpError::new(
                ErrorCode::Unsupported,
                "this client does not support that operation",
            )),
        }
    }

    /// One line of stdin without its ending, after showing `prompt` on
    /// stderr; refused as the real client refuses it when longer than
    /// [`MAX_LINE`] bytes (the line is dropped) or not UTF-8.
    fn read_line(&mut self, prompt: Option<String>) -> Result<Reply, OpError> {
        if let Some(prompt) = prompt {
            self.output.stderr.extend_from_slice(prompt.as_bytes());
        }
        if self.stdin.is_empty() {
            return Ok(Reply::Line { line: None });
        }
        let end = self.stdin.iter().position(|&b| b == b'\n');
        let mut line: Vec<u8> = self
            .stdin
            .drain(..end.map_or(self.stdin.len(), |end| end + 1))
            .collect();
        if line.last() == Some(&b'\n') {
            line.pop();
            if line.last() == Some(&b'\r') {
                line.pop();
            }
        }
        if line.len() > MAX_LINE {
            return Err(OpError::new(
                ErrorCode::Invalid,
                format!("input line longer than {MAX_LINE} bytes (skipped)"),
            ));
        }
        let line = String::from_utf8(line)
            .map_err(|_| OpError::new(ErrorCode::Invalid, "input line is not valid UTF-8"))?;
        Ok(Reply::Line { line: Some(line) })
    }

    /// The next scripted key.
    fn read_key(&mut self) -> Result<Reply, OpError> {
        let script = self
            .keys
            .pop_front()
            .ok_or_else(|| OpError::new(ErrorCode::Io, "the test client has no more keys"))?;
        let mut key = Key {
            key: script.clone(),
            ctrl: false,
            alt: false,
            shift: false,
        };
        loop {
            let rest = if let Some(rest) = key.key.strip_prefix("ctrl+") {
                key.ctrl = true;
                rest
            } else if let Some(rest) = key.key.strip_prefix("alt+") {
                key.alt = true;
                rest
            } else if let Some(rest) = key.key.strip_prefix("shift+") {
                key.shift = true;
                rest
            } else {
                return Ok(Reply::Key(key));
            };
            key.key = rest.to_owned();
        }
    }

    /// `raw` as a path inside the storage folder, `..` resolved; `None`
    /// for any other path (relative ones are the user's home's).
    fn inside_storage(&self, raw: &str) -> Option<PathBuf> {
        let storage = self.storage.as_ref()?;
        let mut path = PathBuf::new();
        for component in Path::new(raw).components() {
            match component {
                Component::ParentDir => {
                    path.pop();
                }
                Component::CurDir => {}
                other => path.push(other),
            }
        }
        (path.is_absolute() && path.starts_with(storage)).then_some(path)
    }

    /// The real client's refusal of `raw`, a path outside the storage
    /// folder, for a user who granted nothing.
    fn refused(&self, raw: &str, action: Action, about_a_folder: bool) -> OpError {
        let entitlements = &self.entitlements;
        let path = match entitlements.resolve_request(raw) {
            Ok((path, _)) => path.named_as_folder(about_a_folder),
            Err(error) => {
                return if entitlements.normalized_ok(raw) && !entitlements.names_a_granted_path(raw)
                {
                    not_granted(raw, action, entitlements.authority())
                } else {
                    OpError::new(ErrorCode::Invalid, error.to_string())
                };
            }
        };
        match entitlements.check_path(&path, action) {
            Err(denial) => denied(denial),
            // In the real client's storage folder, which is not this one.
            Ok(_) => not_granted(raw, action, entitlements.authority()),
        }
    }
}

/// The entitlements the real client has for `origin` with nothing
/// granted, in the user's home as the client finds it.
fn entitlements(origin: &str) -> Result<Entitlements, String> {
    let url = url::Url::parse(origin).map_err(|error| format!("the origin {origin}: {error}"))?;
    let user_home = terminalwire_policy::home::user_home().map_err(failed("the user's home"))?;
    let home = Home::at(user_home.join(".terminalwire"));
    Entitlements::new(&url, &home, &Policy::default(), &user_home, &[])
        .map_err(failed("the client's entitlements"))
}

/// The wire form of the real client's denial.
fn denied(denial: PolicyDenial) -> OpError {
    OpError {
        code: ErrorCode::Denied,
        message: denial.to_string(),
        denial: Some(Denial {
            resource: denial.resource.to_string(),
            action: denial.action.to_string(),
            target: denial.target.clone(),
            reason: denial.reason.to_string(),
            command: denial.command.clone(),
        }),
    }
}

/// The real client's denial of `raw` that tells nothing but that it is
/// not granted (a path it could not resolve).
fn not_granted(raw: &str, action: Action, authority: &impl std::fmt::Display) -> OpError {
    let reason = DenialReason::NotGranted.to_string();
    OpError {
        code: ErrorCode::Denied,
        message: format!("{authority} may not {action} path {raw}: {reason}"),
        denial: Some(Denial {
            resource: "path".into(),
            action: action.to_string(),
            target: raw.to_owned(),
            reason,
            command: None,
        }),
    }
}

fn no_handle() -> OpError {
    OpError::new(ErrorCode::Invalid, "no such streamed write")
}

/// An error of the disk with `path`, as the real client reports it
/// (its code, and its words for the common kinds).
fn fs_error(path: &Path, error: io::Error) -> OpError {
    let path = path.display();
    let (code, message) = match error.kind() {
        io::ErrorKind::NotFound => (ErrorCode::NotFound, format!("{path} does not exist")),
        io::ErrorKind::AlreadyExists => (ErrorCode::Exists, format!("{path} already exists")),
        io::ErrorKind::DirectoryNotEmpty => (ErrorCode::NotEmpty, format!("{path} is not empty")),
        io::ErrorKind::IsADirectory => {
            (ErrorCode::Invalid, format!("{path} is not a regular file"))
        }
        io::ErrorKind::NotADirectory => (ErrorCode::Invalid, format!("{path} is not a folder")),
        _ => (ErrorCode::Io, error.to_string()),
    };
    OpError::new(code, message)
}

fn entry_kind(kind: &std::fs::FileType) -> EntryKind {
    if kind.is_symlink() {
        EntryKind::Symlink
    } else if kind.is_dir() {
        EntryKind::Dir
    } else if kind.is_file() {
        EntryKind::File
    } else {
        EntryKind::Other
    }
}

/// Facts about `path`, without following a symlink.
fn metadata(path: &Path) -> Metadata {
    let Ok(meta) = std::fs::symlink_metadata(path) else {
        return Metadata {
            exists: false,
            kind: None,
            size: 0,
            mode: 0,
            modified_ms: 0,
        };
    };
    #[cfg(unix)]
    let mode = std::os::unix::fs::PermissionsExt::mode(&meta.permissions()) & 0o7777;
    #[cfg(not(unix))]
    let mode = 0;
    let modified_ms = meta
        .modified()
        .ok()
        .and_then(|time| time.duration_since(std::time::UNIX_EPOCH).ok())
        .map_or(0, |since| {
            i64::try_from(since.as_millis()).unwrap_or(i64::MAX)
        });
    Metadata {
        exists: true,
        kind: Some(entry_kind(&meta.file_type())),
        size: meta.len(),
        mode,
        modified_ms,
    }
}

#[cfg(unix)]
fn chmod(path: &Path, mode: u32) -> io::Result<()> {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode & 0o777))
}

#[cfg(not(unix))]
fn chmod(_path: &Path, _mode: u32) -> io::Result<()> {
    Ok(())
}

/// `what` failed with an error.
fn failed<E: std::fmt::Display>(what: &'static str) -> impl FnOnce(E) -> String {
    move |error| format!("{what}: {error}")
}

/// Both ends of the in-memory connection, seen from the server.
struct MemoryTransport {
    outbox: mpsc::Sender<Bytes>,
    inbox: mpsc::UnboundedReceiver<Inbound>,
}

impl Transport for MemoryTransport {
    fn split(self) -> (FrameWriter, FrameReader) {
        let writer = PollSender::new(self.outbox).sink_map_err(TransportError::new);
        let reader = futures_util::stream::unfold(self.inbox, |mut inbox| async move {
            let inbound = inbox.recv().await?;
            Some((Ok(inbound), inbox))
        });
        (Box::pin(writer), Box::pin(reader))
    }
}
