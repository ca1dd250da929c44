//! Frame types: [`ClientFrame`] (client → server) and [`ServerFrame`] (server → client).
//!
//! Every frame is a MessagePack map. Its `t` entry is the frame's permanent type
//! tag (listed on each variant); the other entries are the fields of the
//! variant's payload struct, by name. Optional fields are left out when absent,
//! and receivers ignore entries they do not know, so fields can be added without
//! a version bump. Tags are never reused: a retired tag stays retired.

use serde::{Deserialize, Serialize};
use serde_bytes::ByteBuf;

use crate::handshake::VersionRange;

/// Identifies one request of a session. Chosen by the requester, unique among
/// its requests in flight.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct RequestId(pub u64);

/// Identifies one byte stream of a session. Ids 0, 1 and 2 are the client's
/// stdin, stdout and stderr, like file descriptors.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct StreamId(pub u32);

impl StreamId {
    /// The client's standard input (client → server).
    pub const STDIN: StreamId = StreamId(0);
    /// The client's standard output (server → client).
    pub const STDOUT: StreamId = StreamId(1);
    /// The client's standard error (server → client).
    pub const STDERR: StreamId = StreamId(2);
}

/// Frames the client sends.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "t", rename_all = "snake_case")]
#[non_exhaustive]
pub enum ClientFrame {
    /// `hello`: the first frame of every session; nothing else may come before it.
    Hello(Hello),
    /// `data`: bytes on a client → server stream (e.g. piped stdin).
    Data(Data),
    /// `eof`: the client will send no more data on this stream.
    Eof(Eof),
    /// `window`: the client grants the server more credit on a server → client stream.
    Window(WindowAdjust),
    /// `response`: the answer to a server's [`Request`], matched by id.
    Response(Response),
    /// `signal`: something happened on the client's terminal (interrupt, resize).
    Signal(Signal),
    /// `error`: the client ends the session because of a fatal error.
    Error(SessionError),
    /// `ack`: the client has processed the server's sequenced frames up to
    /// and including `seq` (capability `resume`; not itself sequenced).
    Ack(Ack),
    /// `resume`: instead of `hello`, the first frame on a new connection
    /// that continues an existing session (capability `resume`).
    Resume(Resume),
    /// `detach`: the client asks to leave the session running on the server
    /// and re-attach later (capability `resume`; not sequenced).
    Detach(Detach),
    /// A frame whose tag this implementation does not know (from a newer peer).
    /// Never encoded; receivers reject or ignore it.
    #[serde(skip)]
    Unknown {
        /// The tag as received.
        tag: String,
    },
}

impl ClientFrame {
    /// Bytes of byte strings carried (see [`Frame::bulk_len`](crate::codec::Frame::bulk_len)).
    pub(crate) fn bulk_len(&self) -> usize {
        match self {
            ClientFrame::Data(data) => data.bytes.len(),
            ClientFrame::Response(Response {
                ok: Some(Reply::Data { bytes, .. }),
                ..
            }) => bytes.len(),
            _ => 0,
        }
    }

    /// Whether the frame takes the next sequence number of its direction
    /// when `resume` is on: the frames whose loss the peer would notice.
    /// Handshake and control frames (`hello`, `resume`, `ack`, `detach`,
    /// `error`) are not numbered and never replayed.
    pub fn is_sequenced(&self) -> bool {
        matches!(
            self,
            ClientFrame::Data(_)
                | ClientFrame::Eof(_)
                | ClientFrame::Window(_)
                | ClientFrame::Response(_)
                | ClientFrame::Signal(_)
        )
    }
}

/// Frames the server sends.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "t", rename_all = "snake_case")]
#[non_exhaustive]
pub enum ServerFrame {
    /// `welcome`: the handshake succeeded; the session is open.
    Welcome(Welcome),
    /// `incompatible`: the server speaks none of the client's versions; it closes next.
    Incompatible(Incompatible),
    /// `data`: bytes on a server → client stream (stdout, stderr).
    Data(Data),
    /// `window`: the server grants the client more credit on a client → server stream.
    Window(WindowAdjust),
    /// `request`: the server asks the client to perform an operation.
    Request(Request),
    /// `cancel`: the server stopped waiting for a request's answer
    /// (capability `cancel`). A read of stdin or of a key that has taken no
    /// input yet ends with `cancelled`; anything else is answered as usual.
    Cancel(Cancel),
    /// `exit`: the command finished; the client exits with this status after
    /// writing everything received before it.
    Exit(Exit),
    /// `error`: the server ends the session because of a fatal error.
    Error(SessionError),
    /// `ack`: the server has processed the client's sequenced frames up to
    /// and including `seq` (capability `resume`; not itself sequenced).
    Ack(Ack),
    /// `resumed`: the answer to `resume`; the session continues on this
    /// connection and each side replays what the other lacks.
    Resumed(Resumed),
    /// `detached`: the answer to `detach`. When accepted it is the last
    /// frame the server sends on this connection.
    Detached(Detached),
    /// A frame whose tag this implementation does not know (from a newer peer).
    /// Never encoded; receivers reject or ignore it.
    #[serde(skip)]
    Unknown {
        /// The tag as received.
        tag: String,
    },
}

impl ServerFrame {
    /// Bytes of byte strings carried (see [`Frame::bulk_len`](crate::codec::Frame::bulk_len)).
    pub(crate) fn bulk_len(&self) -> usize {
        match self {
            ServerFrame::Data(data) => data.bytes.len(),
            ServerFrame::Request(request) => match &request.op {
                Operation::FileWrite { bytes, .. }
                | Operation::FileAppend { bytes, .. }
                | Operation::FileWriteChunk { bytes, .. } => bytes.len(),
                _ => 0,
            },
            _ => 0,
        }
    }

    /// Whether the frame takes the next sequence number of its direction
    /// when `resume` is on (see [`ClientFrame::is_sequenced`]).
    pub fn is_sequenced(&self) -> bool {
        matches!(
            self,
            ServerFrame::Data(_)
                | ServerFrame::Window(_)
                | ServerFrame::Request(_)
                | ServerFrame::Cancel(_)
                | ServerFrame::Exit(_)
        )
    }
}

/// Name and version of a program (client or server).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Software {
    /// Program name, e.g. `terminalwire`.
    pub name: String,
    /// Program version, e.g. `0.1.0`.
    pub version: String,
}

/// How the client was invoked.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Program {
    /// The name the user typed: a launcher's name, or `terminalwire URL`.
    pub name: String,
    /// The arguments after the program name, for the app.
    pub args: Vec<String>,
}

/// `hello`: the client introduces itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    /// Protocol versions the client speaks.
    pub versions: VersionRange,
    /// The client program.
    pub client: Software,
    /// Operating system (`linux`, `macos`, `windows`, ...).
    pub os: String,
    /// Operating-system version, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub os_version: Option<String>,
    /// CPU architecture (`x86_64`, `aarch64`, ...).
    pub arch: String,
    /// The authority the client computed from the URL; it keys entitlements.
    pub authority: String,
    /// The absolute path of this authority's storage folder on the client,
    /// which the server may always use; absent when the client has none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage: Option<String>,
    /// The web origin of the server as the client reached it
    /// (`https://host[:port]`, `http://` for `ws://`), the one whose pages
    /// it opens in the browser without a grant; absent when it has none
    /// (a Unix socket).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub origin: Option<String>,
    /// Program name and arguments.
    pub program: Program,
    /// Facts about the client's terminal and standard streams.
    pub terminal: TerminalFacts,
    /// Features the client supports (see `PROTOCOL.md`).
    #[serde(default)]
    pub capabilities: Vec<String>,
    /// Initial credit, in bytes, of each server → client stream.
    pub window: u32,
    /// Largest `data` payload the client accepts, in bytes.
    pub max_chunk: u32,
}

/// Facts about the client's terminal.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TerminalFacts {
    /// Standard input.
    pub stdin: StreamFacts,
    /// Standard output.
    pub stdout: StreamFacts,
    /// Standard error.
    pub stderr: StreamFacts,
    /// The `TERM` environment variable, when set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub term: Option<String>,
}

/// What one standard stream is connected to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StreamFacts {
    /// The kind of file behind the stream.
    pub kind: StreamKind,
    /// Terminal size, for a terminal.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<TerminalSize>,
    /// Colours the stream supports (honours `NO_COLOR` and `CLICOLOR_FORCE`).
    #[serde(default)]
    pub color: ColorLevel,
}

/// The kind of file behind a standard stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StreamKind {
    /// A terminal.
    Tty,
    /// A pipe or socket.
    Pipe,
    /// A regular file.
    File,
    /// `/dev/null` or a closed stream.
    Null,
    /// Anything else (or unknown).
    #[serde(other)]
    Other,
}

/// Colour support of a stream.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ColorLevel {
    /// The 16 basic ANSI colours.
    Ansi16,
    /// 256 colours.
    Ansi256,
    /// 24-bit colour.
    Truecolor,
    /// No colour escapes (also what an unknown level decodes to).
    #[default]
    #[serde(other)]
    None,
}

/// A terminal size in character cells.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct TerminalSize {
    /// Columns.
    pub cols: u16,
    /// Rows.
    pub rows: u16,
}

/// `welcome`: the server accepts the session.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Welcome {
    /// The protocol version both sides now speak.
    pub version: u16,
    /// The server program.
    pub server: Software,
    /// Identifies the session (for logs, and later for resuming): see
    /// [`valid_session_id`].
    pub session_id: String,
    /// Capabilities both sides support.
    #[serde(default)]
    pub capabilities: Vec<String>,
    /// Initial credit, in bytes, of each client → server stream.
    pub window: u32,
    /// Largest `data` payload the server accepts, in bytes.
    pub max_chunk: u32,
    /// How to resume this session after a lost connection; present when
    /// both sides have the `resume` capability.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resume: Option<ResumeTicket>,
}

/// Longest session id, in bytes.
pub const MAX_SESSION_ID_LEN: usize = 128;

/// Whether `id` may be a session id: 1 to [`MAX_SESSION_ID_LEN`] ASCII
/// letters, digits, `-` and `_`. A client names files and log lines with it;
/// another is a protocol violation (section 5).
pub fn valid_session_id(id: &str) -> bool {
    (1..=MAX_SESSION_ID_LEN).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// What a client needs to continue a session on a new connection.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResumeTicket {
    /// The secret that proves the session is the client's, together with
    /// the device key of the secure channel (section 1.1). Rotated: every
    /// `resumed` and `detached` carries the next one.
    pub token: ByteBuf,
    /// Seconds the server keeps the session and its command after the
    /// connection drops.
    pub grace_secs: u32,
    /// Seconds the server keeps a detached session; 0 when detaching is not
    /// offered.
    #[serde(default)]
    pub detach_secs: u32,
}

/// `ack`: cumulative acknowledgement of the peer's sequenced frames.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ack {
    /// The number of the peer's sequenced frames processed so far (the
    /// first sequenced frame of each direction is number 1).
    pub seq: u64,
}

/// `resume`: continue a session on a new connection.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Resume {
    /// The `session_id` from `welcome`.
    pub session_id: String,
    /// The current token (from `welcome.resume` or the last `resumed`).
    pub token: ByteBuf,
    /// Sequenced server frames the client has processed.
    pub received: u64,
}

/// `resumed`: the session continues on this connection.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Resumed {
    /// Sequenced client frames the server has processed: the client replays
    /// the ones after it.
    pub received: u64,
    /// The token for the next resume; the one just used is spent.
    pub token: ByteBuf,
}

/// `detach`: the client wants to leave the command running.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Detach {}

/// `detached`: the server's answer to `detach`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Detached {
    /// Whether the session is now detached. If not, it goes on as before.
    pub accepted: bool,
    /// Why not (or a note for the user), when there is one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// Seconds the server keeps the detached session.
    #[serde(default)]
    pub keep_secs: u32,
    /// The token for re-attaching (the previous one is spent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<ByteBuf>,
}

/// `incompatible`: no common protocol version.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Incompatible {
    /// The versions the server speaks.
    pub versions: VersionRange,
    /// A human-readable explanation for the user, e.g. how to upgrade.
    pub message: String,
}

/// `data`: a chunk of a byte stream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Data {
    /// The stream.
    pub sid: StreamId,
    /// The bytes (MessagePack `bin`).
    pub bytes: ByteBuf,
}

/// `eof`: end of a stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Eof {
    /// The stream.
    pub sid: StreamId,
}

/// `window`: more flow-control credit on a stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct WindowAdjust {
    /// The stream.
    pub sid: StreamId,
    /// Bytes the receiver of this frame may now send in addition.
    pub bytes: u32,
}

/// `exit`: the command's exit status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Exit {
    /// The status the client exits with.
    pub status: u8,
}

/// `error`: a fatal session error; the sender closes the connection next.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionError {
    /// What kind of failure.
    pub code: ErrorCode,
    /// A human-readable message.
    pub message: String,
}

/// `signal`: a terminal event on the client.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Signal {
    /// Which event.
    pub signal: SignalKind,
    /// The new size, for `resize`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<TerminalSize>,
}

/// Terminal events.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SignalKind {
    /// The user pressed Ctrl-C in cooked mode.
    Interrupt,
    /// The terminal window changed size.
    Resize,
    /// A signal this implementation does not know.
    #[serde(other)]
    Unknown,
}

/// `request`: the server asks the client to do something.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Request {
    /// Echoed in the [`Response`].
    pub id: RequestId,
    /// What to do.
    pub op: Operation,
}

/// The capability under which a server may send [`Cancel`].
pub const CANCEL_CAPABILITY: &str = "cancel";

/// `cancel`: the server no longer waits for the answer to request `id`.
///
/// Only a read that has taken nothing from the user yet (`stdin_read_line`,
/// `stdin_read_password`, `stdin_read`, `read_key`) stops: it is answered
/// with the error `cancelled`. A read that has taken input, and every other
/// operation, is answered as if no `cancel` had come, so that nothing the
/// user typed and nothing done on their machine goes unreported.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cancel {
    /// The request given up.
    pub id: RequestId,
}

/// Operations a server can request. Each has a permanent `k` tag.
///
/// Paths are strings as the server means them: absolute, `~` or `~/...`
/// (the user's home), or relative (to the user's home). The client resolves
/// them and checks them against the authority's entitlements before doing
/// anything; a refusal is an [`OpError`] with code `denied` and a
/// [`Denial`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "k", rename_all = "snake_case")]
#[non_exhaustive]
pub enum Operation {
    /// `stdin_read_line`: read one line from the client's standard input.
    /// Answered with [`Reply::Line`].
    StdinReadLine {
        /// Shown before reading, on the client's stderr.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        prompt: Option<String>,
    },
    /// `stdin_read_password`: read one line from the client's terminal
    /// without echo. Fails with `unsupported` when stdin is not a terminal.
    /// Answered with [`Reply::Line`].
    StdinReadPassword {
        /// Shown before reading, on the client's stderr.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        prompt: Option<String>,
    },
    /// `stdin_read`: read up to `max` bytes of standard input (a pipe, a
    /// file). Answered with [`Reply::Data`]; `eof` set at end of input.
    StdinRead {
        /// Most bytes to return (the client may return fewer).
        max: u32,
    },
    /// `file_read`: read up to `len` bytes of a regular file from `offset`.
    /// Answered with [`Reply::Data`]; `eof` set when the file ends within
    /// the range.
    FileRead {
        /// The file.
        path: String,
        /// Where to start.
        #[serde(default)]
        offset: u64,
        /// Most bytes to return (the client may return fewer, so that its
        /// response fits in one frame).
        len: u32,
    },
    /// `file_write`: replace (or create) a file with `bytes`, atomically: a
    /// temporary file beside it is renamed over it. Answered with
    /// [`Reply::Unit`].
    FileWrite {
        /// The file.
        path: String,
        /// The whole new content.
        bytes: ByteBuf,
        /// Permission bits for the file; default: the old file's, else 0644
        /// (0600 in storage), never above the grant's ceiling.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        mode: Option<u32>,
    },
    /// `file_append`: append `bytes` to a file, creating it if missing.
    /// Answered with [`Reply::Unit`].
    FileAppend {
        /// The file.
        path: String,
        /// What to append.
        bytes: ByteBuf,
    },
    /// `file_delete`: delete a file (not a directory). Answered with
    /// [`Reply::Unit`].
    FileDelete {
        /// The file.
        path: String,
    },
    /// `file_exists`: whether a regular file exists there. Answered with
    /// [`Reply::Bool`].
    FileExists {
        /// The path.
        path: String,
    },
    /// `metadata`: facts about a path. The client decides on the path with
    /// its symlinks resolved and then never follows a symlink planted since.
    /// Answered with [`Reply::Metadata`].
    Metadata {
        /// The path.
        path: String,
    },
    /// `chmod`: change a file's or directory's permission bits (never
    /// setuid, setgid or sticky; never above the grant's ceiling). Answered
    /// with [`Reply::Unit`].
    Chmod {
        /// The path.
        path: String,
        /// The new permission bits.
        mode: u32,
    },
    /// `dir_list`: the entries of a directory, sorted by name. Answered with
    /// [`Reply::Entries`].
    DirList {
        /// The directory.
        path: String,
    },
    /// `dir_create`: create a directory. Answered with [`Reply::Unit`].
    DirCreate {
        /// The directory.
        path: String,
        /// Also create missing parents (and succeed if it exists).
        #[serde(default)]
        parents: bool,
        /// Permission bits; default 0755 (0700 in storage), never above the
        /// grant's ceiling.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        mode: Option<u32>,
    },
    /// `dir_exists`: whether a directory exists there. Answered with
    /// [`Reply::Bool`].
    DirExists {
        /// The path.
        path: String,
    },
    /// `dir_delete`: delete a directory; with `recursive`, everything in it
    /// (only when every entry under it may be written). Answered with
    /// [`Reply::Unit`].
    DirDelete {
        /// The directory.
        path: String,
        /// Delete its content too.
        #[serde(default)]
        recursive: bool,
    },
    /// `env_get`: the value of one environment variable of the client.
    /// Answered with [`Reply::Value`].
    EnvGet {
        /// The variable's name.
        name: String,
    },
    /// `browser_open`: open a URL in the user's browser. Answered with
    /// [`Reply::Unit`].
    BrowserOpen {
        /// The URL.
        url: String,
    },
    /// `file_write_open`: start an atomic streamed write: the client creates
    /// a temporary file beside `path` and answers [`Reply::Handle`]. Chunks
    /// follow with `file_write_chunk`; `file_write_commit` renames the
    /// temporary file over `path`; `file_write_abort`, or the end of the
    /// session, deletes it.
    FileWriteOpen {
        /// The file.
        path: String,
        /// Permission bits, as for `file_write`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        mode: Option<u32>,
    },
    /// `file_write_chunk`: append `bytes` to an open streamed write, at
    /// `offset` (the number of bytes written before it, so that chunks sent
    /// concurrently are placed right). Answered with [`Reply::Unit`].
    FileWriteChunk {
        /// From `file_write_open`.
        handle: u64,
        /// Where the bytes go in the new file.
        offset: u64,
        /// The bytes.
        bytes: ByteBuf,
    },
    /// `file_write_commit`: finish a streamed write: sync and rename over
    /// the target. Answered with [`Reply::Unit`].
    FileWriteCommit {
        /// From `file_write_open`.
        handle: u64,
    },
    /// `file_write_abort`: drop a streamed write; the target is untouched.
    /// Answered with [`Reply::Unit`].
    FileWriteAbort {
        /// From `file_write_open`.
        handle: u64,
    },
    /// `terminal_mode`: switch the client's terminal between cooked (line
    /// editing, echo, Ctrl-C interrupts) and raw (every key goes to the app,
    /// Ctrl-C included). The client restores cooked mode when the session
    /// ends, whatever the end. Fails with `unsupported` when stdin is not a
    /// terminal. Answered with [`Reply::Unit`].
    TerminalMode {
        /// The mode.
        mode: TerminalMode,
    },
    /// `read_key`: wait for one key press on the client's terminal (raw mode
    /// for the duration if cooked). Fails with `unsupported` when stdin is
    /// not a terminal. Answered with [`Reply::Key`].
    ReadKey,
    /// An operation this implementation does not know; answered with an
    /// `unsupported` error.
    #[serde(other)]
    Unknown,
}

impl Operation {
    /// The path a path operation names, as the server sent it.
    pub fn path(&self) -> Option<&str> {
        match self {
            Operation::FileRead { path, .. }
            | Operation::FileWrite { path, .. }
            | Operation::FileAppend { path, .. }
            | Operation::FileDelete { path }
            | Operation::FileExists { path }
            | Operation::Metadata { path }
            | Operation::Chmod { path, .. }
            | Operation::DirList { path }
            | Operation::DirCreate { path, .. }
            | Operation::DirExists { path }
            | Operation::DirDelete { path, .. }
            | Operation::FileWriteOpen { path, .. } => Some(path),
            _ => None,
        }
    }

    /// Whether the path the operation names is a folder's (a listing, a
    /// folder made, removed or looked for): what a grant that allows it
    /// must cover.
    pub fn names_a_folder(&self) -> bool {
        matches!(
            self,
            Operation::DirList { .. }
                | Operation::DirCreate { .. }
                | Operation::DirDelete { .. }
                | Operation::DirExists { .. }
        )
    }

    /// Whether the operation only looks at its path (reads a file, lists a
    /// folder, asks whether something is there), rather than changing it.
    pub fn only_reads(&self) -> bool {
        matches!(
            self,
            Operation::FileRead { .. }
                | Operation::FileExists { .. }
                | Operation::DirExists { .. }
                | Operation::Metadata { .. }
                | Operation::DirList { .. }
        )
    }
}

/// How the client's terminal treats input.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TerminalMode {
    /// `cooked`: line editing, echo, Ctrl-C interrupts.
    Cooked,
    /// `raw`: keys go to the app as they are pressed.
    Raw,
    /// A mode this implementation does not know; answered with
    /// `unsupported`.
    #[serde(other)]
    Unknown,
}

/// `response`: the outcome of a [`Request`]; exactly one of `ok` or `error` is set.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Response {
    /// The request's id.
    pub id: RequestId,
    /// The result on success.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ok: Option<Reply>,
    /// The failure.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<OpError>,
}

impl Response {
    /// A successful response.
    pub fn ok(id: RequestId, reply: Reply) -> Self {
        Response {
            id,
            ok: Some(reply),
            error: None,
        }
    }

    /// A failed response.
    pub fn error(id: RequestId, error: OpError) -> Self {
        Response {
            id,
            ok: None,
            error: Some(error),
        }
    }
}

/// Successful results, tagged by shape with `k`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "k", rename_all = "snake_case")]
#[non_exhaustive]
pub enum Reply {
    /// `unit`: done, nothing to return.
    Unit,
    /// `line`: a line of text without its line ending; absent at end of input.
    Line {
        /// The line, or none at end of input.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        line: Option<String>,
    },
    /// `data`: bytes read, and whether the input ended after them.
    Data {
        /// The bytes.
        bytes: ByteBuf,
        /// No more bytes follow.
        #[serde(default)]
        eof: bool,
    },
    /// `bool`: a yes or no answer.
    Bool {
        /// The answer.
        value: bool,
    },
    /// `value`: a text value that may be absent (an unset variable).
    Value {
        /// The value, or none.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        value: Option<String>,
    },
    /// `metadata`: facts about a path; `exists` false (and zeros) when it
    /// does not exist.
    Metadata(Metadata),
    /// `entries`: a directory's entries.
    Entries {
        /// Entries sorted by name.
        entries: Vec<DirEntry>,
    },
    /// `handle`: a client-side handle for later requests.
    Handle {
        /// The handle.
        handle: u64,
    },
    /// `key`: one key press.
    Key(Key),
    /// A reply this implementation does not know.
    #[serde(other)]
    Unknown,
}

/// A key press.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Key {
    /// The key: a character (`a`, `A`, `é`, ` `) or a name (`enter`, `tab`,
    /// `backspace`, `esc`, `up`, `down`, `left`, `right`, `home`, `end`,
    /// `page_up`, `page_down`, `delete`, `insert`, `f1`..`f12`).
    pub key: String,
    /// Control was held.
    #[serde(default)]
    pub ctrl: bool,
    /// Alt (Meta) was held.
    #[serde(default)]
    pub alt: bool,
    /// Shift was held (for named keys; characters are already shifted).
    #[serde(default)]
    pub shift: bool,
}

/// Facts about a path.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Metadata {
    /// Whether anything exists there.
    pub exists: bool,
    /// What it is, when it exists.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<EntryKind>,
    /// Size in bytes.
    #[serde(default)]
    pub size: u64,
    /// Permission bits (including setuid, setgid, sticky).
    #[serde(default)]
    pub mode: u32,
    /// Last modification, milliseconds since the Unix epoch.
    #[serde(default)]
    pub modified_ms: i64,
}

/// One directory entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DirEntry {
    /// The entry's name (valid UTF-8; others are left out).
    pub name: String,
    /// What it is.
    pub kind: EntryKind,
}

/// What a path is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EntryKind {
    /// `file`: a regular file.
    File,
    /// `dir`: a directory.
    Dir,
    /// `symlink`: a symbolic link (never followed).
    Symlink,
    /// `other`: a device, FIFO, socket, or a kind this version does not know.
    #[serde(other)]
    Other,
}

/// Why an operation failed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OpError {
    /// What kind of failure.
    pub code: ErrorCode,
    /// A human-readable message.
    pub message: String,
    /// With code `denied`: what was refused and how the user can allow it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub denial: Option<Denial>,
}

impl OpError {
    /// An error without denial details.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        OpError {
            code,
            message: message.into(),
            denial: None,
        }
    }
}

/// What the client's entitlements refused.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Denial {
    /// `path`, `env` or `browser`.
    pub resource: String,
    /// What was asked: `read`, `write`, `set mode 0777 on`, `launch`.
    pub action: String,
    /// The resolved path, variable name or URL.
    pub target: String,
    /// Why, in words.
    pub reason: String,
    /// The command the user can run to allow it; absent when it can never
    /// be granted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command: Option<String>,
}

/// Error codes shared by operation errors and session errors.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorCode {
    /// `denied`: the client's entitlements do not allow it.
    Denied,
    /// `not_found`: the target does not exist.
    NotFound,
    /// `exists`: the target already exists.
    Exists,
    /// `not_empty`: the directory is not empty.
    NotEmpty,
    /// `too_large`: the result would exceed a limit.
    TooLarge,
    /// `io`: an operating-system error.
    Io,
    /// `invalid`: the request was malformed (bad path, bad argument).
    Invalid,
    /// `unsupported`: the peer does not implement this operation.
    Unsupported,
    /// `protocol`: the peer broke the protocol.
    Protocol,
    /// `incompatible`: no common protocol version.
    Incompatible,
    /// `shutdown`: the server is shutting down.
    Shutdown,
    /// `internal`: a bug or unexpected failure inside the sender.
    Internal,
    /// `expired`: the session to resume does not exist (any more): it ended,
    /// or its grace period ran out.
    Expired,
    /// `cancelled`: the client gave the operation up unfinished (the user
    /// detached while it waited, say, for input).
    Cancelled,
    /// A code this implementation does not know, kept as received.
    Other(String),
}

impl ErrorCode {
    /// The wire spelling.
    pub fn as_str(&self) -> &str {
        match self {
            ErrorCode::Denied => "denied",
            ErrorCode::NotFound => "not_found",
            ErrorCode::Exists => "exists",
            ErrorCode::NotEmpty => "not_empty",
            ErrorCode::TooLarge => "too_large",
            ErrorCode::Io => "io",
            ErrorCode::Invalid => "invalid",
            ErrorCode::Unsupported => "unsupported",
            ErrorCode::Protocol => "protocol",
            ErrorCode::Incompatible => "incompatible",
            ErrorCode::Shutdown => "shutdown",
            ErrorCode::Internal => "internal",
            ErrorCode::Expired => "expired",
            ErrorCode::Cancelled => "cancelled",
            ErrorCode::Other(other) => other,
        }
    }

    /// Parses the wire spelling; unknown codes become [`ErrorCode::Other`].
    pub fn parse(code: &str) -> Self {
        match code {
            "denied" => ErrorCode::Denied,
            "not_found" => ErrorCode::NotFound,
            "exists" => ErrorCode::Exists,
            "not_empty" => ErrorCode::NotEmpty,
            "too_large" => ErrorCode::TooLarge,
            "io" => ErrorCode::Io,
            "invalid" => ErrorCode::Invalid,
            "unsupported" => ErrorCode::Unsupported,
            "protocol" => ErrorCode::Protocol,
            "incompatible" => ErrorCode::Incompatible,
            "shutdown" => ErrorCode::Shutdown,
            "internal" => ErrorCode::Internal,
            "expired" => ErrorCode::Expired,
            "cancelled" => ErrorCode::Cancelled,
            other => ErrorCode::Other(other.to_owned()),
        }
    }
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Serialize for ErrorCode {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for ErrorCode {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let code = std::borrow::Cow::<'de, str>::deserialize(deserializer)?;
        Ok(ErrorCode::parse(&code))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every operation, once: the match in
    /// [`every_operation_is_classified_on_purpose`] has no `_` arm, so a new
    /// one does not compile until someone says what it is.
    fn every_operation() -> Vec<Operation> {
        let path = || "~/x".to_owned();
        let bytes = || ByteBuf::from(b"b".to_vec());
        vec![
            Operation::StdinReadLine { prompt: None },
            Operation::StdinReadPassword { prompt: None },
            Operation::StdinRead { max: 1 },
            Operation::FileRead {
                path: path(),
                offset: 0,
                len: 1,
            },
            Operation::FileWrite {
                path: path(),
                bytes: bytes(),
                mode: None,
            },
            Operation::FileAppend {
                path: path(),
                bytes: bytes(),
            },
            Operation::FileDelete { path: path() },
            Operation::FileExists { path: path() },
            Operation::Metadata { path: path() },
            Operation::Chmod {
                path: path(),
                mode: 0o600,
            },
            Operation::DirList { path: path() },
            Operation::DirCreate {
                path: path(),
                parents: false,
                mode: None,
            },
            Operation::DirExists { path: path() },
            Operation::DirDelete {
                path: path(),
                recursive: false,
            },
            Operation::EnvGet {
                name: "HOME".to_owned(),
            },
            Operation::BrowserOpen {
                url: "https://example.com".to_owned(),
            },
            Operation::FileWriteOpen {
                path: path(),
                mode: None,
            },
            Operation::FileWriteChunk {
                handle: 1,
                offset: 0,
                bytes: bytes(),
            },
            Operation::FileWriteCommit { handle: 1 },
            Operation::FileWriteAbort { handle: 1 },
            Operation::TerminalMode {
                mode: TerminalMode::Raw,
            },
            Operation::ReadKey,
            Operation::Unknown,
        ]
    }

    /// What a grant that allows each operation must cover: whether it names
    /// a path, whether that path is a folder's, and whether it only reads
    /// (else it needs write access). The client's entitlement checks and
    /// the SDK's test client both go by [`Operation::names_a_folder`] and
    /// [`Operation::only_reads`].
    #[test]
    fn every_operation_is_classified_on_purpose() {
        /// (names a path, names a folder, only reads)
        const FILE_READ: (bool, bool, bool) = (true, false, true);
        const FILE_WRITE: (bool, bool, bool) = (true, false, false);
        const FOLDER_READ: (bool, bool, bool) = (true, true, true);
        const FOLDER_WRITE: (bool, bool, bool) = (true, true, false);
        const NO_PATH: (bool, bool, bool) = (false, false, false);
        let operations = every_operation();
        assert_eq!(operations.len(), 23, "one of each");
        for op in operations {
            let expected = match &op {
                Operation::FileRead { .. }
                | Operation::FileExists { .. }
                | Operation::Metadata { .. } => FILE_READ,
                Operation::FileWrite { .. }
                | Operation::FileAppend { .. }
                | Operation::FileDelete { .. }
                | Operation::Chmod { .. }
                | Operation::FileWriteOpen { .. } => FILE_WRITE,
                Operation::DirList { .. } | Operation::DirExists { .. } => FOLDER_READ,
                Operation::DirCreate { .. } | Operation::DirDelete { .. } => FOLDER_WRITE,
                // A chunk, commit or abort names the handle of a write
                // opened (and checked) by `FileWriteOpen`.
                Operation::FileWriteChunk { .. }
                | Operation::FileWriteCommit { .. }
                | Operation::FileWriteAbort { .. }
                | Operation::StdinReadLine { .. }
                | Operation::StdinReadPassword { .. }
                | Operation::StdinRead { .. }
                | Operation::EnvGet { .. }
                | Operation::BrowserOpen { .. }
                | Operation::TerminalMode { .. }
                | Operation::ReadKey
                | Operation::Unknown => NO_PATH,
            };
            let actual = (op.path().is_some(), op.names_a_folder(), op.only_reads());
            assert_eq!(actual, expected, "{op:?}");
        }
    }
}
