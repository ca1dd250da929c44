//! Golden vectors: `tests/vectors.json` is the language-neutral source of truth
//! for the wire format (see `PROTOCOL.md`, "Golden vectors").
//!
//! Each vector is checked three ways: its bytes decode to the frame this file
//! expects and (for canonical vectors) encode back to the same bytes; its JSON
//! `decoded` form is the same MessagePack value as its bytes; and the frame built
//! here encodes to its bytes. The table below and the file must name the same
//! vectors. The robustness tests (truncation, garbage, nesting, size) use the
//! vectors as seeds.
//!
//! To rewrite the file after a deliberate wire change:
//!
//! ```text
//! TERMINALWIRE_REGENERATE_VECTORS=1 CARGO_TARGET_DIR=/work/target-proto \
//!     cargo test -p terminalwire-protocol --test golden -- --ignored regenerate_vectors
//! ```

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::{self, Write as _};
use std::path::PathBuf;

use rmpv::Value as V;
use serde::Deserialize;
use serde::de::{self, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_bytes::ByteBuf;
use terminalwire_protocol::frame::{
    Ack, Cancel, ColorLevel, Data, Denial, Detach, Detached, DirEntry, EntryKind, Eof, Exit, Hello,
    Incompatible, Key, Metadata, OpError, Operation, Program, Reply, Request, Response, Resume,
    ResumeTicket, Resumed, SessionError, Signal, SignalKind, Software, StreamFacts, StreamKind,
    TerminalFacts, TerminalMode, TerminalSize, Welcome, WindowAdjust,
};
use terminalwire_protocol::{
    ClientFrame, DecodeError, ErrorCode, MAX_DEPTH, MAX_FRAME_LEN, RequestId, ServerFrame,
    StreamId, VersionRange, codec,
};

// ---------------------------------------------------------------------------
// The table: every vector's name and the Rust frame it stands for.
// ---------------------------------------------------------------------------

/// A frame of either direction.
#[derive(Debug, Clone, PartialEq)]
enum Frame {
    Client(ClientFrame),
    Server(ServerFrame),
}

impl Frame {
    fn direction(&self) -> &'static str {
        match self {
            Frame::Client(_) => "client",
            Frame::Server(_) => "server",
        }
    }

    fn encode(&self) -> Vec<u8> {
        match self {
            Frame::Client(frame) => codec::encode(frame),
            Frame::Server(frame) => codec::encode(frame),
        }
    }
}

/// Decodes `bytes` as a frame of `direction`.
fn decode(direction: &str, bytes: &[u8]) -> Result<Frame, DecodeError> {
    match direction {
        "client" => codec::decode::<ClientFrame>(bytes).map(Frame::Client),
        "server" => codec::decode::<ServerFrame>(bytes).map(Frame::Server),
        other => panic!("unknown direction {other:?}"),
    }
}

/// One named vector.
struct Case {
    name: &'static str,
    /// The frame the bytes decode to.
    frame: Frame,
    /// `None`: canonical, the bytes are exactly `frame`'s encoding. `Some`: the
    /// bytes are this hand-built value, which decodes to `frame` but is not how
    /// this implementation encodes it.
    wire: Option<V>,
    comment: Option<&'static str>,
}

impl Case {
    fn bytes(&self) -> Vec<u8> {
        match &self.wire {
            None => self.frame.encode(),
            Some(wire) => msgpack(wire),
        }
    }

    fn note(mut self, comment: &'static str) -> Self {
        self.comment = Some(comment);
        self
    }
}

fn client(name: &'static str, frame: ClientFrame) -> Case {
    Case {
        name,
        frame: Frame::Client(frame),
        wire: None,
        comment: None,
    }
}

fn server(name: &'static str, frame: ServerFrame) -> Case {
    Case {
        name,
        frame: Frame::Server(frame),
        wire: None,
        comment: None,
    }
}

/// A decode-only vector: `wire` decodes to `frame`, which re-encodes differently.
fn decode_only(mut case: Case, wire: V) -> Case {
    case.wire = Some(wire);
    case
}

fn s(text: &str) -> String {
    text.to_owned()
}

fn bytes(data: &[u8]) -> ByteBuf {
    ByteBuf::from(data.to_vec())
}

fn map(entries: Vec<(&str, V)>) -> V {
    V::Map(
        entries
            .into_iter()
            .map(|(key, value)| (V::from(key), value))
            .collect(),
    )
}

fn msgpack(value: &V) -> Vec<u8> {
    let mut out = Vec::new();
    rmpv::encode::write_value(&mut out, value).expect("writing to a Vec");
    out
}

fn facts(kind: StreamKind, size: Option<(u16, u16)>, color: ColorLevel) -> StreamFacts {
    StreamFacts {
        kind,
        size: size.map(|(cols, rows)| TerminalSize { cols, rows }),
        color,
    }
}

fn hello_full() -> Hello {
    Hello {
        versions: VersionRange { min: 1, max: 1 },
        client: Software {
            name: s("terminalwire"),
            version: s("0.1.0"),
        },
        os: s("linux"),
        os_version: Some(s("6.8.0")),
        arch: s("x86_64"),
        authority: s("example.com:3000"),
        storage: Some(s(
            "/home/ada/.terminalwire/authorities/example.com:3000/storage",
        )),
        origin: None,
        program: Program {
            name: s("hello"),
            args: vec![s("greet"), s("--name"), s("Ada")],
        },
        terminal: TerminalFacts {
            stdin: facts(StreamKind::Tty, Some((80, 24)), ColorLevel::Truecolor),
            stdout: facts(StreamKind::Pipe, None, ColorLevel::Ansi256),
            stderr: facts(StreamKind::File, None, ColorLevel::Ansi16),
            term: Some(s("xterm-256color")),
        },
        capabilities: vec![s("stdout"), s("stderr"), s("exit"), s("stdin.line")],
        window: 1024 * 1024,
        max_chunk: 64 * 1024,
    }
}

fn hello_minimal() -> Hello {
    Hello {
        versions: VersionRange { min: 1, max: 2 },
        client: Software {
            name: s("tw"),
            version: s("9"),
        },
        os: s("windows"),
        os_version: None,
        arch: s("aarch64"),
        authority: s("127.0.0.1:8080"),
        storage: None,
        origin: None,
        program: Program {
            name: s("terminalwire ws://127.0.0.1:8080/t"),
            args: vec![],
        },
        terminal: TerminalFacts {
            stdin: facts(StreamKind::Null, None, ColorLevel::None),
            stdout: facts(StreamKind::Other, None, ColorLevel::None),
            stderr: facts(StreamKind::Pipe, None, ColorLevel::None),
            term: None,
        },
        capabilities: vec![],
        window: 4096,
        max_chunk: 1024,
    }
}

fn op_error(id: u64, code: ErrorCode, message: &str) -> ClientFrame {
    ClientFrame::Response(Response::error(RequestId(id), OpError::new(code, message)))
}

fn reply(id: u64, reply: Reply) -> ClientFrame {
    ClientFrame::Response(Response::ok(RequestId(id), reply))
}

fn entry(name: &str, kind: EntryKind) -> DirEntry {
    DirEntry {
        name: s(name),
        kind,
    }
}

fn key(name: &str, ctrl: bool, alt: bool, shift: bool) -> Reply {
    Reply::Key(Key {
        key: s(name),
        ctrl,
        alt,
        shift,
    })
}

fn session_error(code: ErrorCode, message: &str) -> SessionError {
    SessionError {
        code,
        message: s(message),
    }
}

fn request(id: u64, op: Operation) -> ServerFrame {
    ServerFrame::Request(Request {
        id: RequestId(id),
        op,
    })
}

/// Every vector, in file order.
#[allow(clippy::too_many_lines)]
fn table() -> Vec<Case> {
    let stream_facts_wire = |kind: &str, color: Option<&str>| {
        let mut entries = vec![("kind", V::from(kind))];
        if let Some(color) = color {
            entries.push(("color", V::from(color)));
        }
        map(entries)
    };
    vec![
        // Client → server.
        client("client_hello_full", ClientFrame::Hello(hello_full()))
            .note("every optional field present"),
        client("client_hello_minimal", ClientFrame::Hello(hello_minimal()))
            .note("optional fields absent; empty lists are still written"),
        decode_only(
            client(
                "client_hello_defaults_absent",
                ClientFrame::Hello(Hello {
                    capabilities: vec![],
                    terminal: TerminalFacts {
                        stdin: facts(StreamKind::Tty, None, ColorLevel::None),
                        stdout: facts(StreamKind::Other, None, ColorLevel::None),
                        stderr: facts(StreamKind::Null, None, ColorLevel::None),
                        term: None,
                    },
                    ..hello_minimal()
                }),
            )
            .note(
                "decode-only: `capabilities` and `color` left out take their defaults \
                 ([] and \"none\"); unknown stream kind \"socket\" decodes as \"other\", \
                 unknown colour \"ansi8\" as \"none\"",
            ),
            map(vec![
                ("t", V::from("hello")),
                ("versions", map(vec![("min", V::from(1)), ("max", V::from(2))])),
                (
                    "client",
                    map(vec![("name", V::from("tw")), ("version", V::from("9"))]),
                ),
                ("os", V::from("windows")),
                ("arch", V::from("aarch64")),
                ("authority", V::from("127.0.0.1:8080")),
                (
                    "program",
                    map(vec![
                        ("name", V::from("terminalwire ws://127.0.0.1:8080/t")),
                        ("args", V::Array(vec![])),
                    ]),
                ),
                (
                    "terminal",
                    map(vec![
                        ("stdin", stream_facts_wire("tty", None)),
                        ("stdout", stream_facts_wire("socket", None)),
                        ("stderr", stream_facts_wire("null", Some("ansi8"))),
                    ]),
                ),
                ("window", V::from(4096)),
                ("max_chunk", V::from(1024)),
            ]),
        ),
        client(
            "client_data_stdin",
            ClientFrame::Data(Data {
                sid: StreamId::STDIN,
                bytes: bytes(b"ls -l\n"),
            }),
        ),
        client(
            "client_data_empty",
            ClientFrame::Data(Data {
                sid: StreamId::STDIN,
                bytes: bytes(b""),
            }),
        )
        .note("an empty payload is an empty bin, c4 00"),
        client("client_eof", ClientFrame::Eof(Eof { sid: StreamId::STDIN })),
        client(
            "client_window",
            ClientFrame::Window(WindowAdjust {
                sid: StreamId::STDOUT,
                bytes: 524_288,
            }),
        ),
        client(
            "client_response_unit",
            ClientFrame::Response(Response::ok(RequestId(1), Reply::Unit)),
        ),
        client(
            "client_response_line",
            ClientFrame::Response(Response::ok(
                RequestId(2),
                Reply::Line {
                    line: Some(s("Ada Lovelace")),
                },
            )),
        ),
        client(
            "client_response_line_eof",
            ClientFrame::Response(Response::ok(RequestId(3), Reply::Line { line: None })),
        )
        .note("end of input: `line` left out"),
        client(
            "client_response_error_denied",
            op_error(4, ErrorCode::Denied, "not entitled"),
        ),
        client(
            "client_response_error_not_found",
            op_error(5, ErrorCode::NotFound, "no such file"),
        ),
        client(
            "client_response_error_cancelled",
            op_error(9, ErrorCode::Cancelled, "the user detached before this finished"),
        ),
        client(
            "client_response_error_io",
            op_error(6, ErrorCode::Io, "reading stdin: broken pipe"),
        ),
        client(
            "client_response_error_invalid",
            op_error(7, ErrorCode::Invalid, "input line is not valid UTF-8"),
        ),
        client(
            "client_response_error_unsupported",
            op_error(8, ErrorCode::Unsupported, "unknown operation"),
        ),
        client(
            "client_response_error_exists",
            op_error(9, ErrorCode::Exists, "/home/ada/reports exists"),
        ),
        client(
            "client_response_error_not_empty",
            op_error(10, ErrorCode::NotEmpty, "/home/ada/reports is not empty"),
        ),
        client(
            "client_response_error_too_large",
            op_error(11, ErrorCode::TooLarge, "/home/ada/big has more than 10000 entries"),
        ),
        client(
            "client_response_error_denied_grantable",
            ClientFrame::Response(Response::error(
                RequestId(12),
                OpError {
                    code: ErrorCode::Denied,
                    message: s(
                        "example.com:3000 may not write path /home/ada/reports/q1.csv: it has \
                         not been granted. To allow it, run: terminalwire entitlement grant \
                         example.com:3000 path '~/reports/**' --write",
                    ),
                    denial: Some(Denial {
                        resource: s("path"),
                        action: s("write"),
                        target: s("/home/ada/reports/q1.csv"),
                        reason: s("it has not been granted"),
                        command: Some(s(
                            "terminalwire entitlement grant example.com:3000 path \
                             '~/reports/**' --write",
                        )),
                    }),
                },
            )),
        )
        .note("a refusal by the entitlements, with the command that would allow it"),
        client(
            "client_response_error_denied_never",
            ClientFrame::Response(Response::error(
                RequestId(13),
                OpError {
                    code: ErrorCode::Denied,
                    message: s(
                        "example.com:3000 may not set mode 4755 on path /home/ada/bin/tool: \
                         mode 4755 has setuid, setgid or sticky bits. This can never be granted.",
                    ),
                    denial: Some(Denial {
                        resource: s("path"),
                        action: s("set mode 4755 on"),
                        target: s("/home/ada/bin/tool"),
                        reason: s("mode 4755 has setuid, setgid or sticky bits"),
                        command: None,
                    }),
                },
            )),
        )
        .note("a refusal no grant can lift: `denial.command` left out"),
        client(
            "client_response_data",
            reply(
                14,
                Reply::Data {
                    bytes: bytes(b"id,total\n1,42\n"),
                    eof: false,
                },
            ),
        )
        .note("`eof` is a defaulted field: written even when false"),
        client(
            "client_response_data_eof",
            reply(
                15,
                Reply::Data {
                    bytes: bytes(b"\x00\xff\xfe tail"),
                    eof: true,
                },
            ),
        ),
        client(
            "client_response_data_empty",
            reply(
                16,
                Reply::Data {
                    bytes: bytes(b""),
                    eof: true,
                },
            ),
        )
        .note("end of input: an empty bin, c4 00, with `eof` true"),
        client(
            "client_response_bool_true",
            reply(17, Reply::Bool { value: true }),
        ),
        client(
            "client_response_bool_false",
            reply(18, Reply::Bool { value: false }),
        ),
        client(
            "client_response_value",
            reply(
                19,
                Reply::Value {
                    value: Some(s("vim")),
                },
            ),
        ),
        client(
            "client_response_value_unset",
            reply(20, Reply::Value { value: None }),
        )
        .note("an unset variable: `value` left out"),
        client(
            "client_response_metadata_file",
            reply(
                21,
                Reply::Metadata(Metadata {
                    exists: true,
                    kind: Some(EntryKind::File),
                    size: 5_000_000_000,
                    mode: 0o4755,
                    modified_ms: 1_700_000_000_123,
                }),
            ),
        )
        .note("mode 0o4755 (setuid shown as is); size and modified_ms need uint64"),
        client(
            "client_response_metadata_dir_before_1970",
            reply(
                22,
                Reply::Metadata(Metadata {
                    exists: true,
                    kind: Some(EntryKind::Dir),
                    size: 4096,
                    mode: 0o700,
                    modified_ms: -86_400_000,
                }),
            ),
        )
        .note("modified_ms is signed: a time before 1970 is negative (int32 here)"),
        client(
            "client_response_metadata_missing",
            reply(
                23,
                Reply::Metadata(Metadata {
                    exists: false,
                    kind: None,
                    size: 0,
                    mode: 0,
                    modified_ms: 0,
                }),
            ),
        )
        .note("nothing there: `kind` left out; the defaulted fields are written as 0"),
        decode_only(
            client(
                "client_response_metadata_missing_short",
                reply(
                    24,
                    Reply::Metadata(Metadata {
                        exists: false,
                        kind: None,
                        size: 0,
                        mode: 0,
                        modified_ms: 0,
                    }),
                ),
            )
            .note("decode-only: `size`, `mode` and `modified_ms` left out default to 0"),
            map(vec![
                ("t", V::from("response")),
                ("id", V::from(24)),
                (
                    "ok",
                    map(vec![("k", V::from("metadata")), ("exists", V::from(false))]),
                ),
            ]),
        ),
        client(
            "client_response_entries",
            reply(
                25,
                Reply::Entries {
                    entries: vec![
                        entry(".profile", EntryKind::File),
                        entry("fifo", EntryKind::Other),
                        entry("latest", EntryKind::Symlink),
                        entry("reports", EntryKind::Dir),
                    ],
                },
            ),
        )
        .note("every entry kind; entries sorted by name"),
        client(
            "client_response_entries_empty",
            reply(26, Reply::Entries { entries: vec![] }),
        )
        .note("an empty directory: an empty array"),
        decode_only(
            client(
                "client_response_entries_unknown_kind",
                reply(
                    27,
                    Reply::Entries {
                        entries: vec![entry("door", EntryKind::Other)],
                    },
                ),
            )
            .note("decode-only: an unknown entry kind decodes as \"other\""),
            map(vec![
                ("t", V::from("response")),
                ("id", V::from(27)),
                (
                    "ok",
                    map(vec![
                        ("k", V::from("entries")),
                        (
                            "entries",
                            V::Array(vec![map(vec![
                                ("name", V::from("door")),
                                ("kind", V::from("door")),
                            ])]),
                        ),
                    ]),
                ),
            ]),
        ),
        decode_only(
            client(
                "client_response_unknown_reply",
                reply(28, Reply::Unknown),
            )
            .note(
                "decode-only: an unknown reply kind decodes as the unknown reply, keeping \
                 the response id (the requester treats it as an unexpected reply)",
            ),
            map(vec![
                ("t", V::from("response")),
                ("id", V::from(28)),
                (
                    "ok",
                    map(vec![("k", V::from("stream")), ("sid", V::from(5))]),
                ),
            ]),
        ),
        client(
            "client_response_handle",
            reply(29, Reply::Handle { handle: 1 }),
        )
        .note("the answer to `file_write_open`: the handle of the streamed write (u64)"),
        client("client_response_key", reply(30, key("é", false, false, false)))
            .note("a character, as typed (UTF-8); the modifiers are defaulted fields, written even when false"),
        client(
            "client_response_key_ctrl_c",
            reply(31, key("c", true, false, false)),
        )
        .note("Ctrl-C in raw mode reaches the app as a key, not as an interrupt"),
        client(
            "client_response_key_named",
            reply(32, key("tab", false, false, true)),
        )
        .note("a named key with a modifier: Shift-Tab"),
        client(
            "client_response_key_all_modifiers",
            reply(33, key("page_down", true, true, true)),
        )
        .note("Ctrl-Alt-Shift-PageDown: every modifier set"),
        decode_only(
            client(
                "client_response_key_modifiers_absent",
                reply(34, key("enter", false, false, false)),
            )
            .note("decode-only: `ctrl`, `alt` and `shift` left out default to false"),
            map(vec![
                ("t", V::from("response")),
                ("id", V::from(34)),
                (
                    "ok",
                    map(vec![("k", V::from("key")), ("key", V::from("enter"))]),
                ),
            ]),
        ),
        client(
            "client_signal_interrupt",
            ClientFrame::Signal(Signal {
                signal: SignalKind::Interrupt,
                size: None,
            }),
        ),
        client(
            "client_signal_resize",
            ClientFrame::Signal(Signal {
                signal: SignalKind::Resize,
                size: Some(TerminalSize {
                    cols: 300,
                    rows: 70,
                }),
            }),
        ),
        decode_only(
            client(
                "client_signal_unknown_kind",
                ClientFrame::Signal(Signal {
                    signal: SignalKind::Unknown,
                    size: None,
                }),
            )
            .note("decode-only: an unknown signal name decodes as the unknown signal"),
            map(vec![("t", V::from("signal")), ("signal", V::from("suspend"))]),
        ),
        decode_only(
            client(
                "client_signal_nil_size",
                ClientFrame::Signal(Signal {
                    signal: SignalKind::Interrupt,
                    size: None,
                }),
            )
            .note("decode-only: nil for an optional field means absent"),
            map(vec![
                ("t", V::from("signal")),
                ("signal", V::from("interrupt")),
                ("size", V::Nil),
            ]),
        ),
        client(
            "client_error_protocol",
            ClientFrame::Error(session_error(
                ErrorCode::Protocol,
                "unexpected welcome frame",
            )),
        ),
        client("client_ack", ClientFrame::Ack(Ack { seq: 300 }))
            .note("resume: the client processed the server's sequenced frames 1..=300"),
        client(
            "client_resume",
            ClientFrame::Resume(Resume {
                session_id: s("5f3a9c01-1"),
                token: bytes(&[0xa5; 32]),
                received: 1234,
            }),
        )
        .note("the first frame on a new connection, instead of hello"),
        client("client_detach", ClientFrame::Detach(Detach {})),
        client(
            "client_error_other_code",
            ClientFrame::Error(session_error(
                ErrorCode::Other(s("quota_exceeded")),
                "too many sessions",
            )),
        )
        .note("a code this implementation does not know is kept as received"),
        decode_only(
            client(
                "client_unknown_tag",
                ClientFrame::Unknown {
                    tag: s("teleport"),
                },
            )
            .note("decode-only: an unknown tag decodes to the unknown frame, which the receiver rejects"),
            map(vec![("t", V::from("teleport")), ("to", V::from("mars"))]),
        ),
        decode_only(
            client("client_extra_field", ClientFrame::Eof(Eof { sid: StreamId::STDIN }))
                .note("decode-only: an unknown entry is ignored, whatever its value"),
            map(vec![
                ("t", V::from("eof")),
                ("sid", V::from(0)),
                (
                    "future",
                    map(vec![("x", V::Array(vec![V::from(1), V::Nil]))]),
                ),
            ]),
        ),
        // Server → client.
        server(
            "server_welcome",
            ServerFrame::Welcome(Welcome {
                version: 1,
                server: Software {
                    name: s("terminalwire-server"),
                    version: s("0.1.0"),
                },
                session_id: s("5f3a9c01-1"),
                capabilities: vec![s("stdout"), s("stderr"), s("exit"), s("stdin.line")],
                window: 1024 * 1024,
                max_chunk: 64 * 1024,
                resume: None,
            }),
        ),
        server(
            "server_welcome_no_capabilities",
            ServerFrame::Welcome(Welcome {
                version: 2,
                server: Software {
                    name: s("other"),
                    version: s("2.0"),
                },
                session_id: s("x"),
                capabilities: vec![],
                window: 65_536,
                max_chunk: 16_384,
                resume: None,
            }),
        ),
        server(
            "server_incompatible",
            ServerFrame::Incompatible(Incompatible {
                versions: VersionRange { min: 2, max: 3 },
                message: s("install a client that supports version 3"),
            }),
        ),
        server(
            "server_data_stdout",
            ServerFrame::Data(Data {
                sid: StreamId::STDOUT,
                bytes: bytes(b"hello, world\n"),
            }),
        ),
        server(
            "server_data_stderr_binary",
            ServerFrame::Data(Data {
                sid: StreamId::STDERR,
                bytes: bytes(b"\xff\x00\x1b[31m"),
            }),
        )
        .note("payloads are raw bytes, not necessarily UTF-8"),
        server(
            "server_data_bin16",
            ServerFrame::Data(Data {
                sid: StreamId::STDOUT,
                bytes: ByteBuf::from((0..300u32).map(|i| (i % 251) as u8).collect::<Vec<_>>()),
            }),
        )
        .note("300 bytes: a bin16 payload, c5 01 2c"),
        server(
            "server_window",
            ServerFrame::Window(WindowAdjust {
                sid: StreamId::STDIN,
                bytes: 1024 * 1024,
            }),
        ),
        server(
            "server_request_read_line_prompt",
            request(
                1,
                Operation::StdinReadLine {
                    prompt: Some(s("Name: ")),
                },
            ),
        ),
        server(
            "server_request_read_line",
            request(2, Operation::StdinReadLine { prompt: None }),
        )
        .note("no prompt: `prompt` left out"),
        server(
            "server_request_large_id",
            request(4_294_967_296, Operation::StdinReadLine { prompt: None }),
        )
        .note("request ids are u64"),
        server(
            "server_request_read_password",
            request(
                5,
                Operation::StdinReadPassword {
                    prompt: Some(s("Password: ")),
                },
            ),
        ),
        server(
            "server_request_read_password_no_prompt",
            request(6, Operation::StdinReadPassword { prompt: None }),
        ),
        server(
            "server_request_stdin_read",
            request(7, Operation::StdinRead { max: 65_536 }),
        ),
        server(
            "server_request_file_read",
            request(
                8,
                Operation::FileRead {
                    path: s("~/reports/q1.csv"),
                    offset: 4_294_967_296,
                    len: 65_536,
                },
            ),
        )
        .note("`offset` is u64"),
        decode_only(
            server(
                "server_request_file_read_no_offset",
                request(
                    10,
                    Operation::FileRead {
                        path: s("notes.txt"),
                        offset: 0,
                        len: 1024,
                    },
                ),
            )
            .note(
                "decode-only: `offset` left out defaults to 0; a relative path is relative \
                 to the user's home",
            ),
            map(vec![
                ("t", V::from("request")),
                ("id", V::from(10)),
                (
                    "op",
                    map(vec![
                        ("k", V::from("file_read")),
                        ("path", V::from("notes.txt")),
                        ("len", V::from(1024)),
                    ]),
                ),
            ]),
        ),
        server(
            "server_request_file_write",
            request(
                11,
                Operation::FileWrite {
                    path: s("/home/ada/.config/app/token"),
                    bytes: bytes(b"\x00secret\xff\n"),
                    mode: Some(0o600),
                },
            ),
        )
        .note("mode 0o600 is 384"),
        server(
            "server_request_file_write_default_mode",
            request(
                12,
                Operation::FileWrite {
                    path: s("~/notes.txt"),
                    bytes: bytes(b""),
                    mode: None,
                },
            ),
        )
        .note("no `mode`: the client picks it; an empty file is an empty bin"),
        server(
            "server_request_file_append",
            request(
                13,
                Operation::FileAppend {
                    path: s("~/log.txt"),
                    bytes: bytes(b"started\n"),
                },
            ),
        ),
        server(
            "server_request_file_delete",
            request(
                14,
                Operation::FileDelete {
                    path: s("~/tmp/old.txt"),
                },
            ),
        ),
        server(
            "server_request_file_exists",
            request(
                15,
                Operation::FileExists {
                    path: s("~/.config/app/config.toml"),
                },
            ),
        ),
        server(
            "server_request_metadata",
            request(
                16,
                Operation::Metadata {
                    path: s("/etc/hosts"),
                },
            ),
        ),
        server(
            "server_request_chmod",
            request(
                17,
                Operation::Chmod {
                    path: s("~/bin/tool"),
                    mode: 0o755,
                },
            ),
        )
        .note("mode 0o755 is 493"),
        server(
            "server_request_dir_list",
            request(18, Operation::DirList { path: s("~") }),
        ),
        server(
            "server_request_dir_create",
            request(
                19,
                Operation::DirCreate {
                    path: s("~/reports/2024/q1"),
                    parents: true,
                    mode: Some(0o700),
                },
            ),
        ),
        server(
            "server_request_dir_create_defaults",
            request(
                20,
                Operation::DirCreate {
                    path: s("reports"),
                    parents: false,
                    mode: None,
                },
            ),
        )
        .note("`parents` is defaulted (always written); `mode` optional"),
        server(
            "server_request_dir_exists",
            request(
                21,
                Operation::DirExists {
                    path: s("~/reports"),
                },
            ),
        ),
        server(
            "server_request_dir_delete",
            request(
                22,
                Operation::DirDelete {
                    path: s("~/reports/2024"),
                    recursive: true,
                },
            ),
        ),
        server(
            "server_request_dir_delete_empty",
            request(
                23,
                Operation::DirDelete {
                    path: s("~/reports/empty"),
                    recursive: false,
                },
            ),
        ),
        server(
            "server_request_env_get",
            request(
                24,
                Operation::EnvGet {
                    name: s("EDITOR"),
                },
            ),
        ),
        server(
            "server_request_browser_open",
            request(
                25,
                Operation::BrowserOpen {
                    url: s("https://example.com/login?code=1234"),
                },
            ),
        ),
        server(
            "server_request_file_write_open",
            request(
                26,
                Operation::FileWriteOpen {
                    path: s("~/backups/db.tar"),
                    mode: Some(0o600),
                },
            ),
        )
        .note("starts a streamed write; answered with a `handle` reply"),
        server(
            "server_request_file_write_open_default_mode",
            request(
                27,
                Operation::FileWriteOpen {
                    path: s("~/big.iso"),
                    mode: None,
                },
            ),
        )
        .note("no `mode`: the client picks it, as for `file_write`"),
        server(
            "server_request_file_write_chunk",
            request(
                28,
                Operation::FileWriteChunk {
                    handle: 1,
                    offset: 5_368_709_120,
                    bytes: bytes(b"\x00chunk\xff"),
                },
            ),
        )
        .note("`offset` (u64) is where the bytes go, so chunks sent concurrently land right"),
        server(
            "server_request_file_write_commit",
            request(29, Operation::FileWriteCommit { handle: 1 }),
        ),
        server(
            "server_request_file_write_abort",
            request(30, Operation::FileWriteAbort { handle: 2 }),
        ),
        server(
            "server_request_terminal_mode_raw",
            request(
                31,
                Operation::TerminalMode {
                    mode: TerminalMode::Raw,
                },
            ),
        ),
        server(
            "server_request_terminal_mode_cooked",
            request(
                32,
                Operation::TerminalMode {
                    mode: TerminalMode::Cooked,
                },
            ),
        ),
        server("server_request_read_key", request(33, Operation::ReadKey))
            .note("an operation without fields: the `op` map holds only `k`"),
        decode_only(
            server("server_request_unknown_op", request(9, Operation::Unknown)).note(
                "decode-only: an unknown operation decodes as the unknown operation \
                 (answered with an `unsupported` error), keeping the request id",
            ),
            map(vec![
                ("t", V::from("request")),
                ("id", V::from(9)),
                (
                    "op",
                    map(vec![("k", V::from("fs_read")), ("path", V::from("/etc/hosts"))]),
                ),
            ]),
        ),
        server(
            "server_cancel",
            ServerFrame::Cancel(Cancel { id: RequestId(12) }),
        )
        .note("capability `cancel`: the server gave up waiting for request 12"),
        server("server_exit_0", ServerFrame::Exit(Exit { status: 0 })),
        server("server_ack", ServerFrame::Ack(Ack { seq: 7 })),
        server(
            "server_resumed",
            ServerFrame::Resumed(Resumed {
                received: 42,
                token: bytes(&[0x5a; 32]),
            }),
        ),
        server(
            "server_detached",
            ServerFrame::Detached(Detached {
                accepted: true,
                message: None,
                keep_secs: 3600,
                token: Some(bytes(&[0x11; 32])),
            }),
        ),
        server(
            "server_detach_refused",
            ServerFrame::Detached(Detached {
                accepted: false,
                message: Some(s("this command needs you at the terminal")),
                keep_secs: 0,
                token: None,
            }),
        ),
        server(
            "server_welcome_resumable",
            ServerFrame::Welcome(Welcome {
                version: 1,
                server: Software {
                    name: s("terminalwire-server"),
                    version: s("0.1.0"),
                },
                session_id: s("5f3a9c01-2"),
                capabilities: vec![s("stdout"), s("resume")],
                window: 1024 * 1024,
                max_chunk: 64 * 1024,
                resume: Some(ResumeTicket {
                    token: bytes(&[0x33; 32]),
                    grace_secs: 120,
                    detach_secs: 3600,
                }),
            }),
        ),
        server(
            "server_error_expired",
            ServerFrame::Error(session_error(
                ErrorCode::Expired,
                "there is no session 5f3a9c01-1 to resume",
            )),
        ),
        server("server_exit_255", ServerFrame::Exit(Exit { status: 255 })),
        server(
            "server_error_shutdown",
            ServerFrame::Error(session_error(
                ErrorCode::Shutdown,
                "the server is shutting down; the command was cancelled",
            )),
        ),
        server(
            "server_error_protocol",
            ServerFrame::Error(session_error(ErrorCode::Protocol, "expected hello, got data")),
        ),
        server(
            "server_error_incompatible",
            ServerFrame::Error(session_error(ErrorCode::Incompatible, "no common version")),
        ),
        server(
            "server_error_internal",
            ServerFrame::Error(session_error(ErrorCode::Internal, "bug")),
        ),
        server(
            "server_error_other_code",
            ServerFrame::Error(session_error(ErrorCode::Other(s("quota")), "too many")),
        )
        .note("a code this implementation does not know is kept as received"),
        decode_only(
            server(
                "server_unknown_tag",
                ServerFrame::Unknown {
                    tag: s("teleport"),
                },
            )
            .note("decode-only: an unknown tag decodes to the unknown frame, which the receiver rejects"),
            map(vec![("t", V::from("teleport")), ("x", V::from(1))]),
        ),
        decode_only(
            server("server_extra_field", ServerFrame::Exit(Exit { status: 3 }))
                .note("decode-only: unknown entries are ignored, wherever they are"),
            map(vec![
                ("future", V::Binary(vec![1, 2, 3])),
                ("status", V::from(3)),
                ("t", V::from("exit")),
                ("hint", V::from("later")),
            ]),
        ),
    ]
}

// ---------------------------------------------------------------------------
// The file.
// ---------------------------------------------------------------------------

/// One entry of `vectors.json`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Vector {
    name: String,
    direction: String,
    hex: String,
    decoded: Ordered,
    #[serde(default = "yes")]
    canonical: bool,
    #[serde(default)]
    #[allow(dead_code)]
    comment: Option<String>,
}

fn yes() -> bool {
    true
}

/// A JSON value read as the MessagePack value it stands for, keeping the order
/// of object entries (`{"$bin": "<hex>"}` is a bin value).
#[derive(Debug)]
struct Ordered(V);

impl<'de> Deserialize<'de> for Ordered {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct OrderedVisitor;

        impl<'de> Visitor<'de> for OrderedVisitor {
            type Value = Ordered;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON value")
            }
            fn visit_unit<E>(self) -> Result<Ordered, E> {
                Ok(Ordered(V::Nil))
            }
            fn visit_bool<E>(self, v: bool) -> Result<Ordered, E> {
                Ok(Ordered(V::from(v)))
            }
            fn visit_u64<E>(self, v: u64) -> Result<Ordered, E> {
                Ok(Ordered(V::from(v)))
            }
            fn visit_i64<E>(self, v: i64) -> Result<Ordered, E> {
                Ok(Ordered(V::from(v)))
            }
            fn visit_f64<E>(self, v: f64) -> Result<Ordered, E> {
                Ok(Ordered(V::from(v)))
            }
            fn visit_str<E>(self, v: &str) -> Result<Ordered, E> {
                Ok(Ordered(V::from(v)))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Ordered, A::Error> {
                let mut items = Vec::new();
                while let Some(Ordered(item)) = seq.next_element()? {
                    items.push(item);
                }
                Ok(Ordered(V::Array(items)))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut access: A) -> Result<Ordered, A::Error> {
                let mut entries = Vec::new();
                while let Some((key, Ordered(value))) = access.next_entry::<String, Ordered>()? {
                    entries.push((key, value));
                }
                if let [(key, V::String(hex))] = entries.as_slice()
                    && key == "$bin"
                {
                    let hex = hex.as_str().ok_or_else(|| de::Error::custom("bad $bin"))?;
                    let data = hex::decode(hex).map_err(de::Error::custom)?;
                    return Ok(Ordered(V::Binary(data)));
                }
                Ok(Ordered(V::Map(
                    entries
                        .into_iter()
                        .map(|(key, value)| (V::from(key), value))
                        .collect(),
                )))
            }
        }

        deserializer.deserialize_any(OrderedVisitor)
    }
}

fn vectors_path() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/vectors.json")
}

fn load() -> Vec<Vector> {
    let text = std::fs::read_to_string(vectors_path()).expect("reading tests/vectors.json");
    serde_json::from_str(&text).expect("parsing tests/vectors.json")
}

fn vector_bytes(vector: &Vector) -> Vec<u8> {
    assert_eq!(
        vector.hex,
        vector.hex.to_lowercase(),
        "{}: hex must be lowercase",
        vector.name
    );
    hex::decode(&vector.hex).unwrap_or_else(|e| panic!("{}: bad hex: {e}", vector.name))
}

/// Reads exactly one MessagePack value.
fn read_value(bytes: &[u8]) -> V {
    let mut rest = bytes;
    let value = rmpv::decode::read_value(&mut rest).expect("a MessagePack value");
    assert!(rest.is_empty(), "trailing bytes after the value");
    value
}

// ---------------------------------------------------------------------------
// The golden checks.
// ---------------------------------------------------------------------------

#[test]
fn table_and_file_name_the_same_vectors() {
    let table = table();
    let file = load();
    let table_names: Vec<&str> = table.iter().map(|case| case.name).collect();
    let file_names: Vec<&str> = file.iter().map(|vector| vector.name.as_str()).collect();
    let table_set: BTreeSet<&str> = table_names.iter().copied().collect();
    let file_set: BTreeSet<&str> = file_names.iter().copied().collect();
    assert_eq!(
        table_set.len(),
        table_names.len(),
        "duplicate names in the table"
    );
    assert_eq!(
        file_set.len(),
        file_names.len(),
        "duplicate names in the file"
    );
    let missing: Vec<_> = table_set.difference(&file_set).collect();
    let unexpected: Vec<_> = file_set.difference(&table_set).collect();
    assert!(
        missing.is_empty() && unexpected.is_empty(),
        "vectors in the table but not the file: {missing:?}; in the file but not the table: {unexpected:?}"
    );
}

#[test]
fn vector_bytes_decode_to_the_expected_frames_and_back() {
    let table: BTreeMap<&str, Case> = table().into_iter().map(|case| (case.name, case)).collect();
    for vector in load() {
        let name = &vector.name;
        let Some(case) = table.get(name.as_str()) else {
            panic!("{name}: not in the table");
        };
        assert_eq!(
            vector.direction,
            case.frame.direction(),
            "{name}: direction"
        );
        assert_eq!(
            vector.canonical,
            case.wire.is_none(),
            "{name}: `canonical` disagrees with the table"
        );
        let bytes = vector_bytes(&vector);
        let frame = decode(&vector.direction, &bytes)
            .unwrap_or_else(|error| panic!("{name}: does not decode: {error}"));
        assert_eq!(frame, case.frame, "{name}: decodes to another frame");
        let again = frame.encode();
        if vector.canonical {
            assert_eq!(
                hex::encode(&again),
                vector.hex,
                "{name}: re-encodes differently"
            );
        } else {
            // Decode-only vectors (unknown tags, unknown entries, defaults, nil
            // for absent): the decoded frame is what matters; its encoding is the
            // canonical form, which these bytes deliberately are not.
            assert_ne!(again, bytes, "{name}: is canonical after all; drop `wire`");
            if !matches!(
                frame,
                Frame::Client(ClientFrame::Unknown { .. })
                    | Frame::Server(ServerFrame::Unknown { .. })
            ) {
                assert_eq!(decode(&vector.direction, &again).unwrap(), frame, "{name}");
            }
        }
    }
}

#[test]
fn vector_json_is_the_same_value_as_the_bytes() {
    for vector in load() {
        let name = &vector.name;
        let bytes = vector_bytes(&vector);
        let from_bytes = read_value(&bytes);
        assert_eq!(
            vector.decoded.0, from_bytes,
            "{name}: `decoded` differs from `hex`"
        );
        if vector.canonical {
            // Canonical bytes are the smallest encoding of the value, so the JSON
            // alone determines them.
            assert_eq!(
                hex::encode(msgpack(&vector.decoded.0)),
                vector.hex,
                "{name}: not the smallest encoding of `decoded`"
            );
        }
    }
}

#[test]
fn table_frames_encode_to_the_vector_bytes() {
    let file: BTreeMap<String, Vector> = load()
        .into_iter()
        .map(|vector| (vector.name.clone(), vector))
        .collect();
    for case in table() {
        let Some(vector) = file.get(case.name) else {
            panic!("{}: not in the file", case.name);
        };
        assert_eq!(
            hex::encode(case.bytes()),
            vector.hex,
            "{}: the table's bytes differ from the file's",
            case.name
        );
        if case.wire.is_none() {
            assert_eq!(
                hex::encode(case.frame.encode()),
                vector.hex,
                "{}",
                case.name
            );
        }
    }
}

/// The labels of the variants a frame exercises.
fn labels(frame: &Frame, out: &mut BTreeSet<String>) {
    let mut code = |code: &ErrorCode| {
        out.insert(match code {
            ErrorCode::Other(_) => "code:<other>".to_owned(),
            code => format!("code:{code}"),
        });
    };
    let mut found = Vec::new();
    match frame {
        Frame::Client(frame) => match frame {
            ClientFrame::Hello(hello) => {
                found.push("client:hello".to_owned());
                found.push(
                    match hello.storage {
                        Some(_) => "hello:storage",
                        None => "hello:no-storage",
                    }
                    .to_owned(),
                );
                for facts in [
                    &hello.terminal.stdin,
                    &hello.terminal.stdout,
                    &hello.terminal.stderr,
                ] {
                    found.push(format!("kind:{:?}", facts.kind));
                    found.push(format!("color:{:?}", facts.color));
                }
            }
            ClientFrame::Data(_) => found.push("client:data".to_owned()),
            ClientFrame::Eof(_) => found.push("client:eof".to_owned()),
            ClientFrame::Window(_) => found.push("client:window".to_owned()),
            ClientFrame::Response(response) => {
                found.push("client:response".to_owned());
                if let Some(reply) = &response.ok {
                    let label = match reply {
                        Reply::Unit => "reply:unit".to_owned(),
                        Reply::Line { line: Some(_) } => "reply:line".to_owned(),
                        Reply::Line { line: None } => "reply:line-eof".to_owned(),
                        Reply::Data { bytes, .. } if bytes.is_empty() => {
                            "reply:data-empty".to_owned()
                        }
                        Reply::Data { eof: false, .. } => "reply:data".to_owned(),
                        Reply::Data { eof: true, .. } => "reply:data-eof".to_owned(),
                        Reply::Bool { value } => format!("reply:bool-{value}"),
                        Reply::Value { value: Some(_) } => "reply:value".to_owned(),
                        Reply::Value { value: None } => "reply:value-unset".to_owned(),
                        Reply::Metadata(meta) => match (meta.exists, meta.kind) {
                            (false, None) => "reply:metadata-missing".to_owned(),
                            (true, Some(kind)) => format!("reply:metadata-{kind:?}"),
                            other => panic!("inconsistent metadata {other:?}"),
                        },
                        Reply::Entries { entries } => {
                            for entry in entries {
                                found.push(format!("entry:{:?}", entry.kind));
                            }
                            if entries.is_empty() {
                                "reply:entries-empty".to_owned()
                            } else {
                                "reply:entries".to_owned()
                            }
                        }
                        Reply::Handle { .. } => "reply:handle".to_owned(),
                        Reply::Key(key) => {
                            found.push(
                                if key.key.chars().count() == 1 {
                                    "key:char"
                                } else {
                                    "key:named"
                                }
                                .to_owned(),
                            );
                            for (held, label) in [
                                (key.ctrl, "key:ctrl"),
                                (key.alt, "key:alt"),
                                (key.shift, "key:shift"),
                                (!(key.ctrl || key.alt || key.shift), "key:no-modifiers"),
                            ] {
                                if held {
                                    found.push(label.to_owned());
                                }
                            }
                            "reply:key".to_owned()
                        }
                        Reply::Unknown => "reply:<unknown>".to_owned(),
                        other => panic!("unlisted reply {other:?}"),
                    };
                    found.push(label);
                }
                if let Some(error) = &response.error {
                    code(&error.code);
                    found.push(
                        match &error.denial {
                            None => "denial:none",
                            Some(Denial {
                                command: Some(_), ..
                            }) => "denial:command",
                            Some(Denial { command: None, .. }) => "denial:no-command",
                        }
                        .to_owned(),
                    );
                }
            }
            ClientFrame::Signal(signal) => found.push(format!("signal:{:?}", signal.signal)),
            ClientFrame::Error(error) => {
                found.push("client:error".to_owned());
                code(&error.code);
            }
            ClientFrame::Ack(_) => found.push("client:ack".to_owned()),
            ClientFrame::Resume(_) => found.push("client:resume".to_owned()),
            ClientFrame::Detach(_) => found.push("client:detach".to_owned()),
            ClientFrame::Unknown { .. } => found.push("client:<unknown>".to_owned()),
            other => panic!("unlisted client frame {other:?}"),
        },
        Frame::Server(frame) => match frame {
            ServerFrame::Welcome(welcome) => {
                found.push("server:welcome".to_owned());
                if welcome.resume.is_some() {
                    found.push("welcome:resume".to_owned());
                }
            }
            ServerFrame::Incompatible(_) => found.push("server:incompatible".to_owned()),
            ServerFrame::Data(_) => found.push("server:data".to_owned()),
            ServerFrame::Window(_) => found.push("server:window".to_owned()),
            ServerFrame::Request(request) => found.push(match &request.op {
                Operation::StdinReadLine { prompt: Some(_) } => "op:stdin_read_line".to_owned(),
                Operation::StdinReadLine { prompt: None } => {
                    "op:stdin_read_line-no-prompt".to_owned()
                }
                Operation::StdinReadPassword { prompt: Some(_) } => {
                    "op:stdin_read_password".to_owned()
                }
                Operation::StdinReadPassword { prompt: None } => {
                    "op:stdin_read_password-no-prompt".to_owned()
                }
                Operation::StdinRead { .. } => "op:stdin_read".to_owned(),
                Operation::FileRead { .. } => "op:file_read".to_owned(),
                Operation::FileWrite { mode: Some(_), .. } => "op:file_write".to_owned(),
                Operation::FileWrite { mode: None, .. } => "op:file_write-no-mode".to_owned(),
                Operation::FileAppend { .. } => "op:file_append".to_owned(),
                Operation::FileDelete { .. } => "op:file_delete".to_owned(),
                Operation::FileExists { .. } => "op:file_exists".to_owned(),
                Operation::Metadata { .. } => "op:metadata".to_owned(),
                Operation::Chmod { .. } => "op:chmod".to_owned(),
                Operation::DirList { .. } => "op:dir_list".to_owned(),
                Operation::DirCreate { mode: Some(_), .. } => "op:dir_create".to_owned(),
                Operation::DirCreate { mode: None, .. } => "op:dir_create-no-mode".to_owned(),
                Operation::DirExists { .. } => "op:dir_exists".to_owned(),
                Operation::DirDelete {
                    recursive: true, ..
                } => "op:dir_delete".to_owned(),
                Operation::DirDelete {
                    recursive: false, ..
                } => "op:dir_delete-not-recursive".to_owned(),
                Operation::EnvGet { .. } => "op:env_get".to_owned(),
                Operation::BrowserOpen { .. } => "op:browser_open".to_owned(),
                Operation::FileWriteOpen { mode: Some(_), .. } => "op:file_write_open".to_owned(),
                Operation::FileWriteOpen { mode: None, .. } => {
                    "op:file_write_open-no-mode".to_owned()
                }
                Operation::FileWriteChunk { .. } => "op:file_write_chunk".to_owned(),
                Operation::FileWriteCommit { .. } => "op:file_write_commit".to_owned(),
                Operation::FileWriteAbort { .. } => "op:file_write_abort".to_owned(),
                Operation::TerminalMode { mode } => format!("op:terminal_mode-{mode:?}"),
                Operation::ReadKey => "op:read_key".to_owned(),
                Operation::Unknown => "op:<unknown>".to_owned(),
                other => panic!("unlisted operation {other:?}"),
            }),
            ServerFrame::Cancel(_) => found.push("server:cancel".to_owned()),
            ServerFrame::Exit(_) => found.push("server:exit".to_owned()),
            ServerFrame::Error(error) => {
                found.push("server:error".to_owned());
                code(&error.code);
            }
            ServerFrame::Ack(_) => found.push("server:ack".to_owned()),
            ServerFrame::Resumed(_) => found.push("server:resumed".to_owned()),
            ServerFrame::Detached(detached) => found.push(format!(
                "server:detached-{}",
                if detached.accepted {
                    "accepted"
                } else {
                    "refused"
                }
            )),
            ServerFrame::Unknown { .. } => found.push("server:<unknown>".to_owned()),
            other => panic!("unlisted server frame {other:?}"),
        },
    }
    out.extend(found);
}

#[test]
fn vectors_cover_every_variant() {
    let mut seen = BTreeSet::new();
    for case in table() {
        labels(&case.frame, &mut seen);
    }
    let expected = [
        "client:hello",
        "client:data",
        "client:eof",
        "client:window",
        "client:response",
        "client:error",
        "client:ack",
        "client:resume",
        "client:detach",
        "client:<unknown>",
        "server:welcome",
        "server:incompatible",
        "server:data",
        "server:window",
        "server:cancel",
        "server:exit",
        "server:error",
        "server:ack",
        "server:resumed",
        "server:detached-accepted",
        "server:detached-refused",
        "welcome:resume",
        "server:<unknown>",
        "signal:Interrupt",
        "signal:Resize",
        "signal:Unknown",
        "op:stdin_read_line",
        "op:stdin_read_line-no-prompt",
        "op:stdin_read_password",
        "op:stdin_read_password-no-prompt",
        "op:stdin_read",
        "op:file_read",
        "op:file_write",
        "op:file_write-no-mode",
        "op:file_append",
        "op:file_delete",
        "op:file_exists",
        "op:metadata",
        "op:chmod",
        "op:dir_list",
        "op:dir_create",
        "op:dir_create-no-mode",
        "op:dir_exists",
        "op:dir_delete",
        "op:dir_delete-not-recursive",
        "op:env_get",
        "op:browser_open",
        "op:file_write_open",
        "op:file_write_open-no-mode",
        "op:file_write_chunk",
        "op:file_write_commit",
        "op:file_write_abort",
        "op:terminal_mode-Cooked",
        "op:terminal_mode-Raw",
        "op:read_key",
        "op:<unknown>",
        "reply:unit",
        "reply:line",
        "reply:line-eof",
        "reply:data",
        "reply:data-eof",
        "reply:data-empty",
        "reply:bool-true",
        "reply:bool-false",
        "reply:value",
        "reply:value-unset",
        "reply:metadata-File",
        "reply:metadata-Dir",
        "reply:metadata-missing",
        "reply:entries",
        "reply:entries-empty",
        "reply:handle",
        "reply:key",
        "reply:<unknown>",
        "key:char",
        "key:named",
        "key:ctrl",
        "key:alt",
        "key:shift",
        "key:no-modifiers",
        "entry:File",
        "entry:Dir",
        "entry:Symlink",
        "entry:Other",
        "hello:storage",
        "hello:no-storage",
        "denial:none",
        "denial:command",
        "denial:no-command",
        "kind:Tty",
        "kind:Pipe",
        "kind:File",
        "kind:Null",
        "kind:Other",
        "color:Ansi16",
        "color:Ansi256",
        "color:Truecolor",
        "color:None",
        "code:denied",
        "code:not_found",
        "code:exists",
        "code:not_empty",
        "code:too_large",
        "code:io",
        "code:invalid",
        "code:unsupported",
        "code:protocol",
        "code:incompatible",
        "code:shutdown",
        "code:internal",
        "code:expired",
        "code:cancelled",
        "code:<other>",
    ];
    let expected: BTreeSet<String> = expected.iter().map(|&label| label.to_owned()).collect();
    assert_eq!(seen, expected);
}

/// Writes `tests/vectors.json` from the table. The file, not this function, is
/// the source of truth: run it only after a deliberate wire change, and review
/// the diff.
#[test]
#[ignore = "rewrites tests/vectors.json; run with TERMINALWIRE_REGENERATE_VECTORS=1 and --ignored"]
fn regenerate_vectors() {
    if std::env::var_os("TERMINALWIRE_REGENERATE_VECTORS").is_none() {
        return;
    }
    let mut out = String::from("[\n");
    let table = table();
    for (i, case) in table.iter().enumerate() {
        let bytes = case.bytes();
        out.push_str("  {\n");
        let _ = writeln!(out, "    \"name\": {},", json_str(case.name));
        let _ = writeln!(out, "    \"direction\": \"{}\",", case.frame.direction());
        if let Some(comment) = case.comment {
            let _ = writeln!(out, "    \"comment\": {},", json_str(comment));
        }
        if case.wire.is_some() {
            out.push_str("    \"canonical\": false,\n");
        }
        let _ = writeln!(out, "    \"hex\": \"{}\",", hex::encode(&bytes));
        out.push_str("    \"decoded\": ");
        write_json(&read_value(&bytes), 2, &mut out);
        out.push_str("\n  }");
        out.push_str(if i + 1 < table.len() { ",\n" } else { "\n" });
    }
    out.push_str("]\n");
    std::fs::write(vectors_path(), out).expect("writing tests/vectors.json");
}

fn json_str(text: &str) -> String {
    serde_json::to_string(text).expect("a string always serialises")
}

/// Writes a MessagePack value as JSON, keeping map order; `indent` is the
/// nesting level of the value.
fn write_json(value: &V, indent: usize, out: &mut String) {
    let pad = |level: usize| "  ".repeat(level);
    match value {
        V::Nil => out.push_str("null"),
        V::Boolean(b) => out.push_str(if *b { "true" } else { "false" }),
        V::Integer(n) => out.push_str(&n.to_string()),
        V::String(text) => out.push_str(&json_str(text.as_str().expect("UTF-8 string"))),
        V::Binary(data) => {
            let _ = write!(out, "{{\"$bin\": \"{}\"}}", hex::encode(data));
        }
        V::Array(items)
            if items
                .iter()
                .all(|item| !matches!(item, V::Map(_) | V::Array(_))) =>
        {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                write_json(item, indent, out);
            }
            out.push(']');
        }
        V::Array(items) => {
            out.push_str("[\n");
            for (i, item) in items.iter().enumerate() {
                out.push_str(&pad(indent + 1));
                write_json(item, indent + 1, out);
                out.push_str(if i + 1 < items.len() { ",\n" } else { "\n" });
            }
            out.push_str(&pad(indent));
            out.push(']');
        }
        V::Map(entries) => {
            out.push_str("{\n");
            for (i, (key, item)) in entries.iter().enumerate() {
                out.push_str(&pad(indent + 1));
                out.push_str(&json_str(key.as_str().expect("string keys")));
                out.push_str(": ");
                write_json(item, indent + 1, out);
                out.push_str(if i + 1 < entries.len() { ",\n" } else { "\n" });
            }
            out.push_str(&pad(indent));
            out.push('}');
        }
        other => panic!("no JSON form for {other:?}"),
    }
}

// ---------------------------------------------------------------------------
// Robustness.
// ---------------------------------------------------------------------------

/// Decodes in both directions; must never panic.
fn decode_both(bytes: &[u8]) -> [Option<Frame>; 2] {
    ["client", "server"].map(|direction| decode(direction, bytes).ok())
}

#[test]
fn every_prefix_of_every_vector_is_an_error() {
    for vector in load() {
        let bytes = vector_bytes(&vector);
        for cut in 0..bytes.len() {
            for direction in ["client", "server"] {
                assert!(
                    decode(direction, &bytes[..cut]).is_err(),
                    "{}: the {cut}-byte prefix decodes as a {direction} frame",
                    vector.name
                );
            }
        }
    }
}

#[test]
fn trailing_bytes_are_an_error() {
    for vector in load() {
        let mut bytes = vector_bytes(&vector);
        bytes.push(0xc0);
        assert!(
            matches!(
                decode(&vector.direction, &bytes),
                Err(DecodeError::NotAFrame { .. })
            ),
            "{}: decodes with a trailing byte",
            vector.name
        );
    }
}

#[test]
fn non_maps_and_maps_without_a_string_tag_are_not_frames() {
    for value in [
        V::Array(vec![V::from("exit"), V::from(3)]),
        V::Array(vec![V::from("teleport")]),
        V::from("exit"),
        V::Nil,
        map(vec![]),
        map(vec![("status", V::from(3))]),
        map(vec![("t", V::from(1))]),
        map(vec![("t", V::from("exit")), ("t", V::from("exit"))]),
        V::Map(vec![(V::from(0), V::from("exit"))]),
    ] {
        for direction in ["client", "server"] {
            assert!(
                matches!(
                    decode(direction, &msgpack(&value)),
                    Err(DecodeError::NotAFrame { .. })
                ),
                "{value} decodes as a {direction} frame"
            );
        }
    }
}

/// A small deterministic PRNG (SplitMix64).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

/// Checks the properties every decoded frame has: it re-encodes to bytes that
/// decode to the same frame (unknown frames are never encoded).
fn check_decoded(input: &[u8]) {
    for frame in decode_both(input).into_iter().flatten() {
        if matches!(
            frame,
            Frame::Client(ClientFrame::Unknown { .. }) | Frame::Server(ServerFrame::Unknown { .. })
        ) {
            continue;
        }
        let again = decode(frame.direction(), &frame.encode())
            .unwrap_or_else(|error| panic!("{input:02x?}: re-encoding fails to decode: {error}"));
        assert_eq!(again, frame, "{input:02x?}: round trip changes the frame");
    }
}

#[test]
fn random_garbage_never_panics() {
    let mut rng = Rng(0x5eed_7e41_1a1e_0001);
    for _ in 0..20_000 {
        let len = rng.below(64);
        let input: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
        check_decoded(&input);
    }
}

#[test]
fn mutated_vectors_never_panic() {
    let seeds: Vec<Vec<u8>> = load().iter().map(vector_bytes).collect();
    let mut rng = Rng(0x5eed_7e41_1a1e_0002);
    let mut decoded = 0usize;
    for _ in 0..20_000 {
        let mut input = seeds[rng.below(seeds.len())].clone();
        for _ in 0..=rng.below(3) {
            let at = rng.below(input.len() + 1);
            match rng.below(4) {
                0 if at < input.len() => input[at] = rng.next() as u8,
                1 if at < input.len() => input[at] ^= 1 << rng.below(8),
                2 if at < input.len() => {
                    input.remove(at);
                }
                _ => input.insert(at, rng.next() as u8),
            }
        }
        check_decoded(&input);
        decoded += decode_both(&input).iter().flatten().count();
    }
    // The mutations must reach the payload decoders, not only the framing.
    assert!(decoded > 500, "only {decoded} mutated inputs decoded");
}

#[test]
fn deep_nesting_is_an_error_not_a_stack_overflow() {
    // {"t":"exit","status":3,"x":[[[...]]]} with `arrays` nested arrays.
    let nested = |arrays: usize| {
        let mut bytes = msgpack(&map(vec![("t", V::from("exit")), ("status", V::from(3))]));
        bytes[0] = 0x83;
        bytes.extend(msgpack(&V::from("x")));
        bytes.extend(std::iter::repeat_n(0x91, arrays));
        bytes.push(0xc0);
        bytes
    };
    // The frame map is level 1.
    assert_eq!(
        decode("server", &nested(MAX_DEPTH - 1)).unwrap(),
        Frame::Server(ServerFrame::Exit(Exit { status: 3 }))
    );
    for arrays in [MAX_DEPTH, 1000, 100_000] {
        assert!(
            matches!(
                decode("server", &nested(arrays)),
                Err(DecodeError::NotAFrame { .. })
            ),
            "{arrays} nested arrays decode"
        );
    }
    // Inside an operation, whose `k` tag makes serde buffer the map.
    let mut bytes = msgpack(&map(vec![
        ("t", V::from("request")),
        ("id", V::from(1)),
        ("op", map(vec![("k", V::from("x"))])),
    ]));
    let op_map = bytes.len() - 5;
    assert_eq!(bytes[op_map], 0x81);
    bytes[op_map] = 0x82;
    bytes.extend(msgpack(&V::from("y")));
    bytes.extend(std::iter::repeat_n(0x91, 100_000));
    bytes.push(0xc0);
    assert!(decode("server", &bytes).is_err());
}

/// A data frame whose encoding is `MAX_FRAME_LEN + extra` bytes long.
fn data_frame_of_len(extra: usize) -> Vec<u8> {
    // Map header, "t", "data", "sid", 1, "bytes", bin32 header: 24 bytes.
    let payload = MAX_FRAME_LEN - 24 + extra;
    let bytes = codec::encode(&ServerFrame::Data(Data {
        sid: StreamId::STDOUT,
        bytes: ByteBuf::from(vec![b'x'; payload]),
    }));
    assert_eq!(bytes.len(), MAX_FRAME_LEN + extra);
    bytes
}

#[test]
fn oversized_frames_are_too_large() {
    assert!(codec::decode::<ServerFrame>(&data_frame_of_len(0)).is_ok());
    match codec::decode::<ServerFrame>(&data_frame_of_len(1)) {
        Err(DecodeError::TooLarge { len, limit }) => {
            assert_eq!((len, limit), (MAX_FRAME_LEN + 1, MAX_FRAME_LEN));
        }
        other => panic!("expected TooLarge, got {other:?}"),
    }
    // Refused on size alone, before parsing.
    let junk = vec![0xc1; MAX_FRAME_LEN + 1];
    assert!(matches!(
        codec::decode::<ClientFrame>(&junk),
        Err(DecodeError::TooLarge { .. })
    ));
}

/// The frames that carry a byte payload, each carrying `payload`: `data` in
/// both directions, the `data` reply, and the `file_write`, `file_append` and
/// `file_write_chunk` operations.
fn payload_frames(payload: &[u8]) -> Vec<Frame> {
    let data = Data {
        sid: StreamId::STDERR,
        bytes: bytes(payload),
    };
    vec![
        Frame::Server(ServerFrame::Data(data.clone())),
        Frame::Client(ClientFrame::Data(data)),
        Frame::Client(reply(
            1,
            Reply::Data {
                bytes: bytes(payload),
                eof: true,
            },
        )),
        Frame::Server(request(
            2,
            Operation::FileWrite {
                path: s("~/f"),
                bytes: bytes(payload),
                mode: Some(0o600),
            },
        )),
        Frame::Server(request(
            3,
            Operation::FileAppend {
                path: s("~/f"),
                bytes: bytes(payload),
            },
        )),
        Frame::Server(request(
            4,
            Operation::FileWriteChunk {
                handle: 1,
                offset: 1 << 32,
                bytes: bytes(payload),
            },
        )),
    ]
}

/// Collects the `bytes` entries of the maps, at any depth, whose `t` or `k`
/// tag names a payload-carrying frame, reply or operation, labelled
/// `t:<tag>` or `k:<tag>`.
fn payload_fields<'a>(value: &'a V, out: &mut Vec<(String, &'a V)>) {
    match value {
        V::Map(entries) => {
            let field = |name: &str| {
                entries
                    .iter()
                    .find(|(key, _)| key.as_str() == Some(name))
                    .map(|(_, value)| value)
            };
            for tag_key in ["t", "k"] {
                if let Some(tag @ ("data" | "file_write" | "file_append" | "file_write_chunk")) =
                    field(tag_key).and_then(V::as_str)
                    && let Some(payload) = field("bytes")
                {
                    out.push((format!("{tag_key}:{tag}"), payload));
                }
            }
            for (_, item) in entries {
                payload_fields(item, out);
            }
        }
        V::Array(items) => {
            for item in items {
                payload_fields(item, out);
            }
        }
        _ => {}
    }
}

const PAYLOAD_TAGS: [&str; 5] = [
    "t:data",
    "k:data",
    "k:file_write",
    "k:file_append",
    "k:file_write_chunk",
];

#[test]
fn payloads_are_msgpack_bin() {
    let key = msgpack(&V::from("bytes"));
    for (len, marker, header) in [
        (0usize, 0xc4u8, 2usize),
        (1, 0xc4, 2),
        (255, 0xc4, 2),
        (256, 0xc5, 3),
        (65_535, 0xc5, 3),
        (65_536, 0xc6, 5),
    ] {
        let payload = vec![7u8; len];
        let mut tags = BTreeSet::new();
        for frame in payload_frames(&payload) {
            let encoded = frame.encode();
            // The `bytes` key occurs once; the payload's header follows it.
            let found = encoded.windows(key.len()).position(|w| w == &key[..]);
            let last = encoded.windows(key.len()).rposition(|w| w == &key[..]);
            assert_eq!(found, last, "{frame:?}: `bytes` twice");
            let at = found.expect("a `bytes` key") + key.len();
            assert_eq!(encoded[at], marker, "{len}-byte payload in {frame:?}");
            assert_eq!(
                &encoded[at + header..at + header + len],
                &payload[..],
                "{len}-byte payload"
            );
            let value = read_value(&encoded);
            let mut fields = Vec::new();
            payload_fields(&value, &mut fields);
            assert_eq!(fields.len(), 1, "{len}-byte payload");
            let (tag, field) = &fields[0];
            assert_eq!(*field, &V::Binary(payload.clone()), "{tag}");
            tags.insert(tag.clone());
        }
        assert_eq!(
            tags,
            PAYLOAD_TAGS.iter().map(|&tag| tag.to_owned()).collect()
        );
    }
    // And in the vectors: every payload is a bin value, and the vectors have
    // payloads of every kind.
    let mut tags = BTreeSet::new();
    for vector in load() {
        let value = read_value(&vector_bytes(&vector));
        let mut fields = Vec::new();
        payload_fields(&value, &mut fields);
        for (tag, field) in fields {
            assert!(
                matches!(field, V::Binary(_)),
                "{}: the {tag} payload is not bin",
                vector.name
            );
            tags.insert(tag);
        }
    }
    assert_eq!(
        tags,
        PAYLOAD_TAGS.iter().map(|&tag| tag.to_owned()).collect()
    );
}

#[test]
fn encode_into_appends() {
    let mut out = vec![0xaa];
    codec::encode_into(&ServerFrame::Exit(Exit { status: 1 }), &mut out);
    codec::encode_into(
        &ServerFrame::Unknown {
            tag: s("never sent"),
        },
        &mut out,
    );
    let mut expected = vec![0xaa];
    expected.extend(codec::encode(&ServerFrame::Exit(Exit { status: 1 })));
    expected.push(0x80);
    assert_eq!(out, expected);
}

#[test]
fn protocol_md_states_the_constants() {
    let spec =
        std::fs::read_to_string(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("PROTOCOL.md"))
            .expect("reading PROTOCOL.md");
    for fact in [
        format!("`{}`", terminalwire_protocol::SUBPROTOCOL),
        format!("{MAX_FRAME_LEN} bytes"),
        format!("{MAX_DEPTH} levels"),
        format!("{} bytes", terminalwire_protocol::DEFAULT_WINDOW),
        format!("{} bytes", terminalwire_protocol::DEFAULT_MAX_CHUNK),
        format!(
            "{} bytes (`flow::MAX_GROWN_WINDOW`)",
            terminalwire_protocol::flow::MAX_GROWN_WINDOW
        ),
        format!(
            "{} ms (`flow::MIN_GROWTH_RTT`)",
            terminalwire_protocol::flow::MIN_GROWTH_RTT.as_millis()
        ),
        format!("2^32 ({} bytes)", terminalwire_protocol::flow::MAX_CREDIT),
    ] {
        assert!(spec.contains(&fact), "PROTOCOL.md does not say {fact:?}");
    }
}
