//! Property tests of the protocol crate (proptest):
//!
//! - every [`ClientFrame`] and [`ServerFrame`] (each variant, arbitrary
//!   strings, bytes and numbers) survives `codec::encode` → `codec::decode`;
//! - the decoder never panics on arbitrary or mutated bytes, in either
//!   direction, what it accepts re-encodes to the same frame, and it never
//!   accepts input over [`MAX_FRAME_LEN`];
//! - the secure channel gives back arbitrary frame sequences in order, and
//!   refuses a sealed message with any single bit flipped, a dropped message
//!   or a replay.
//!
//! Case counts are kept to a few hundred so the suite stays fast in debug.
//! The coverage-guided counterparts of these properties are the targets in
//! the `fuzz/` folder at the root of the repository.

use proptest::collection::vec;
use proptest::option;
use proptest::prelude::*;
use serde_bytes::ByteBuf;
use terminalwire_protocol::frame::{
    Cancel, ColorLevel, Data, Denial, DirEntry, EntryKind, Eof, Exit, Hello, Incompatible, Key,
    Metadata, OpError, Operation, Program, Reply, Request, Response, SessionError, Signal,
    SignalKind, Software, StreamFacts, StreamKind, TerminalFacts, TerminalMode, TerminalSize,
    Welcome, WindowAdjust,
};
#[cfg(not(feature = "insecure-plaintext-bench"))]
use terminalwire_protocol::secure::SecureError;
use terminalwire_protocol::secure::{Initiator, MAX_PIECE, Opener, Responder, Sealer, StaticKey};
use terminalwire_protocol::{
    ClientFrame, DecodeError, ErrorCode, MAX_FRAME_LEN, RequestId, ServerFrame, StreamId,
    VersionRange, codec,
};

// ---------------------------------------------------------------------------
// Strategies for the frame types of `frame.rs`.
// ---------------------------------------------------------------------------

/// Any text, including control characters, NUL and non-ASCII, kept short.
fn text() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => "\\PC{0,12}",
        1 => any::<String>().prop_map(|s| s.chars().take(24).collect()),
        1 => Just(String::new()),
    ]
}

fn bytes() -> impl Strategy<Value = ByteBuf> {
    vec(any::<u8>(), 0..64).prop_map(ByteBuf::from)
}

fn texts() -> impl Strategy<Value = Vec<String>> {
    vec(text(), 0..4)
}

fn versions() -> impl Strategy<Value = VersionRange> {
    (any::<u16>(), any::<u16>()).prop_map(|(min, max)| VersionRange { min, max })
}

fn software() -> impl Strategy<Value = Software> {
    (text(), text()).prop_map(|(name, version)| Software { name, version })
}

fn terminal_size() -> impl Strategy<Value = TerminalSize> {
    (any::<u16>(), any::<u16>()).prop_map(|(cols, rows)| TerminalSize { cols, rows })
}

fn stream_facts() -> BoxedStrategy<StreamFacts> {
    let kind = prop_oneof![
        Just(StreamKind::Tty),
        Just(StreamKind::Pipe),
        Just(StreamKind::File),
        Just(StreamKind::Null),
        Just(StreamKind::Other),
    ];
    let color = prop_oneof![
        Just(ColorLevel::Ansi16),
        Just(ColorLevel::Ansi256),
        Just(ColorLevel::Truecolor),
        Just(ColorLevel::None),
    ];
    (kind, option::of(terminal_size()), color)
        .prop_map(|(kind, size, color)| StreamFacts { kind, size, color })
        .boxed()
}

fn hello() -> BoxedStrategy<Hello> {
    let terminal = (
        stream_facts(),
        stream_facts(),
        stream_facts(),
        option::of(text()),
    )
        .prop_map(|(stdin, stdout, stderr, term)| TerminalFacts {
            stdin,
            stdout,
            stderr,
            term,
        });
    let program = (text(), texts()).prop_map(|(name, args)| Program { name, args });
    (
        (versions(), software(), text(), option::of(text()), text()),
        (
            text(),
            option::of(text()),
            option::of(text()),
            program,
            terminal,
            texts(),
        ),
        (any::<u32>(), any::<u32>()),
    )
        .prop_map(
            |(
                (versions, client, os, os_version, arch),
                (authority, storage, origin, program, terminal, capabilities),
                (window, max_chunk),
            )| Hello {
                versions,
                client,
                os,
                os_version,
                arch,
                authority,
                storage,
                origin,
                program,
                terminal,
                capabilities,
                window,
                max_chunk,
            },
        )
        .boxed()
}

/// The wire spellings of the known codes; `Other` must hold anything else,
/// since a known spelling decodes to its own variant.
const KNOWN_CODES: [&str; 12] = [
    "denied",
    "not_found",
    "exists",
    "not_empty",
    "too_large",
    "io",
    "invalid",
    "unsupported",
    "protocol",
    "incompatible",
    "shutdown",
    "internal",
];

fn error_code() -> impl Strategy<Value = ErrorCode> {
    prop_oneof![
        4 => proptest::sample::select(&KNOWN_CODES[..]).prop_map(ErrorCode::parse),
        1 => text()
            .prop_filter("a known code", |s| !KNOWN_CODES.contains(&s.as_str()))
            .prop_map(ErrorCode::Other),
    ]
}

fn session_error() -> impl Strategy<Value = SessionError> {
    (error_code(), text()).prop_map(|(code, message)| SessionError { code, message })
}

fn sid() -> impl Strategy<Value = StreamId> {
    prop_oneof![0u32..4, any::<u32>()].prop_map(StreamId)
}

fn data() -> impl Strategy<Value = Data> {
    (sid(), bytes()).prop_map(|(sid, bytes)| Data { sid, bytes })
}

fn window() -> impl Strategy<Value = WindowAdjust> {
    (sid(), any::<u32>()).prop_map(|(sid, bytes)| WindowAdjust { sid, bytes })
}

fn entry_kind() -> impl Strategy<Value = EntryKind> {
    prop_oneof![
        Just(EntryKind::File),
        Just(EntryKind::Dir),
        Just(EntryKind::Symlink),
        Just(EntryKind::Other),
    ]
}

fn reply() -> BoxedStrategy<Reply> {
    let metadata = (
        any::<bool>(),
        option::of(entry_kind()),
        any::<u64>(),
        any::<u32>(),
        any::<i64>(),
    )
        .prop_map(|(exists, kind, size, mode, modified_ms)| Metadata {
            exists,
            kind,
            size,
            mode,
            modified_ms,
        });
    let entry = (text(), entry_kind()).prop_map(|(name, kind)| DirEntry { name, kind });
    let key = (text(), any::<bool>(), any::<bool>(), any::<bool>()).prop_map(
        |(key, ctrl, alt, shift)| Key {
            key,
            ctrl,
            alt,
            shift,
        },
    );
    prop_oneof![
        Just(Reply::Unit),
        option::of(text()).prop_map(|line| Reply::Line { line }),
        (bytes(), any::<bool>()).prop_map(|(bytes, eof)| Reply::Data { bytes, eof }),
        any::<bool>().prop_map(|value| Reply::Bool { value }),
        option::of(text()).prop_map(|value| Reply::Value { value }),
        metadata.prop_map(Reply::Metadata),
        vec(entry, 0..4).prop_map(|entries| Reply::Entries { entries }),
        any::<u64>().prop_map(|handle| Reply::Handle { handle }),
        key.prop_map(Reply::Key),
        Just(Reply::Unknown),
    ]
    .boxed()
}

fn op_error() -> BoxedStrategy<OpError> {
    let denial = (text(), text(), text(), text(), option::of(text())).prop_map(
        |(resource, action, target, reason, command)| Denial {
            resource,
            action,
            target,
            reason,
            command,
        },
    );
    (error_code(), text(), option::of(denial))
        .prop_map(|(code, message, denial)| OpError {
            code,
            message,
            denial,
        })
        .boxed()
}

fn response() -> BoxedStrategy<Response> {
    (any::<u64>(), option::of(reply()), option::of(op_error()))
        .prop_map(|(id, ok, error)| Response {
            id: RequestId(id),
            ok,
            error,
        })
        .boxed()
}

fn operation() -> BoxedStrategy<Operation> {
    let path = text;
    let mode = || option::of(any::<u32>());
    let terminal_mode = prop_oneof![
        Just(TerminalMode::Cooked),
        Just(TerminalMode::Raw),
        Just(TerminalMode::Unknown),
    ];
    prop_oneof![
        option::of(text()).prop_map(|prompt| Operation::StdinReadLine { prompt }),
        option::of(text()).prop_map(|prompt| Operation::StdinReadPassword { prompt }),
        any::<u32>().prop_map(|max| Operation::StdinRead { max }),
        (path(), any::<u64>(), any::<u32>()).prop_map(|(path, offset, len)| Operation::FileRead {
            path,
            offset,
            len
        }),
        (path(), bytes(), mode()).prop_map(|(path, bytes, mode)| Operation::FileWrite {
            path,
            bytes,
            mode
        }),
        (path(), bytes()).prop_map(|(path, bytes)| Operation::FileAppend { path, bytes }),
        path().prop_map(|path| Operation::FileDelete { path }),
        path().prop_map(|path| Operation::FileExists { path }),
        path().prop_map(|path| Operation::Metadata { path }),
        (path(), any::<u32>()).prop_map(|(path, mode)| Operation::Chmod { path, mode }),
        path().prop_map(|path| Operation::DirList { path }),
        (path(), any::<bool>(), mode()).prop_map(|(path, parents, mode)| {
            Operation::DirCreate {
                path,
                parents,
                mode,
            }
        }),
        path().prop_map(|path| Operation::DirExists { path }),
        (path(), any::<bool>())
            .prop_map(|(path, recursive)| Operation::DirDelete { path, recursive }),
        text().prop_map(|name| Operation::EnvGet { name }),
        text().prop_map(|url| Operation::BrowserOpen { url }),
        (path(), mode()).prop_map(|(path, mode)| Operation::FileWriteOpen { path, mode }),
        (any::<u64>(), any::<u64>(), bytes()).prop_map(|(handle, offset, bytes)| {
            Operation::FileWriteChunk {
                handle,
                offset,
                bytes,
            }
        }),
        any::<u64>().prop_map(|handle| Operation::FileWriteCommit { handle }),
        any::<u64>().prop_map(|handle| Operation::FileWriteAbort { handle }),
        terminal_mode.prop_map(|mode| Operation::TerminalMode { mode }),
        Just(Operation::ReadKey),
        Just(Operation::Unknown),
    ]
    .boxed()
}

fn client_frame() -> BoxedStrategy<ClientFrame> {
    let signal = prop_oneof![
        Just(SignalKind::Interrupt),
        Just(SignalKind::Resize),
        Just(SignalKind::Unknown),
    ];
    prop_oneof![
        hello().prop_map(ClientFrame::Hello),
        data().prop_map(ClientFrame::Data),
        sid().prop_map(|sid| ClientFrame::Eof(Eof { sid })),
        window().prop_map(ClientFrame::Window),
        response().prop_map(ClientFrame::Response),
        (signal, option::of(terminal_size()))
            .prop_map(|(signal, size)| ClientFrame::Signal(Signal { signal, size })),
        session_error().prop_map(ClientFrame::Error),
    ]
    .boxed()
}

fn server_frame() -> BoxedStrategy<ServerFrame> {
    let welcome = (
        any::<u16>(),
        software(),
        text(),
        texts(),
        any::<u32>(),
        any::<u32>(),
    )
        .prop_map(
            |(version, server, session_id, capabilities, window, max_chunk)| Welcome {
                version,
                server,
                session_id,
                capabilities,
                window,
                max_chunk,
                resume: None,
            },
        );
    prop_oneof![
        welcome.prop_map(ServerFrame::Welcome),
        (versions(), text()).prop_map(|(versions, message)| {
            ServerFrame::Incompatible(Incompatible { versions, message })
        }),
        data().prop_map(ServerFrame::Data),
        window().prop_map(ServerFrame::Window),
        (any::<u64>(), operation()).prop_map(|(id, op)| ServerFrame::Request(Request {
            id: RequestId(id),
            op
        })),
        any::<u64>().prop_map(|id| ServerFrame::Cancel(Cancel { id: RequestId(id) })),
        any::<u8>().prop_map(|status| ServerFrame::Exit(Exit { status })),
        session_error().prop_map(ServerFrame::Error),
    ]
    .boxed()
}

/// Bytes worth decoding: pure noise, or a real encoded frame (of either
/// direction) with a few bytes flipped, inserted, removed or cut off.
fn frame_like_bytes() -> impl Strategy<Value = Vec<u8>> {
    let encoded = prop_oneof![
        client_frame().prop_map(|f| codec::encode(&f)),
        server_frame().prop_map(|f| codec::encode(&f)),
    ];
    let mutated = (encoded, vec((any::<usize>(), any::<u8>(), 0u8..4), 0..4)).prop_map(
        |(mut bytes, edits)| {
            for (at, value, how) in edits {
                let at = at % (bytes.len() + 1);
                match how {
                    0 if at < bytes.len() => bytes[at] ^= value | 1,
                    1 => bytes.insert(at, value),
                    2 if at < bytes.len() => {
                        bytes.remove(at);
                    }
                    _ => bytes.truncate(at),
                }
            }
            bytes
        },
    );
    prop_oneof![
        1 => vec(any::<u8>(), 0..256),
        3 => mutated,
    ]
}

// ---------------------------------------------------------------------------
// Codec properties.
// ---------------------------------------------------------------------------

/// Whatever `bytes` are, decoding returns (never panics), accepts nothing over
/// the limit, and a decoded known frame re-encodes to an equal frame.
fn check_decoder<F>(bytes: &[u8]) -> Result<(), TestCaseError>
where
    F: codec::Frame + std::fmt::Debug + PartialEq,
{
    if let Ok(frame) = codec::decode::<F>(bytes) {
        prop_assert!(bytes.len() <= MAX_FRAME_LEN);
        let again = codec::encode(&frame);
        // An `Unknown` frame is never encoded (it writes an empty map, which
        // does not decode), so only known frames must come back.
        if again != [0x80] {
            prop_assert_eq!(codec::decode::<F>(&again).ok(), Some(frame));
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    #[test]
    fn client_frames_round_trip(frame in client_frame()) {
        let bytes = codec::encode(&frame);
        prop_assert!(bytes.len() <= MAX_FRAME_LEN);
        let back: ClientFrame = codec::decode(&bytes)
            .map_err(|e| TestCaseError::fail(format!("{e}")))?;
        prop_assert_eq!(back, frame);
    }

    #[test]
    fn server_frames_round_trip(frame in server_frame()) {
        let bytes = codec::encode(&frame);
        prop_assert!(bytes.len() <= MAX_FRAME_LEN);
        let back: ServerFrame = codec::decode(&bytes)
            .map_err(|e| TestCaseError::fail(format!("{e}")))?;
        prop_assert_eq!(back, frame);
    }

    #[test]
    fn encode_into_appends_exactly_one_frame(a in server_frame(), b in server_frame()) {
        let mut out = codec::encode(&a);
        let split = out.len();
        codec::encode_into(&b, &mut out);
        prop_assert_eq!(codec::decode::<ServerFrame>(&out[..split]).ok(), Some(a));
        prop_assert_eq!(codec::decode::<ServerFrame>(&out[split..]).ok(), Some(b));
        // Two frames back to back are not one frame.
        prop_assert!(codec::decode::<ServerFrame>(&out).is_err());
    }

    #[test]
    fn decoding_arbitrary_bytes_never_panics(bytes in frame_like_bytes()) {
        check_decoder::<ClientFrame>(&bytes)?;
        check_decoder::<ServerFrame>(&bytes)?;
    }
}

proptest! {
    // Each case allocates over a mebibyte: a handful is plenty.
    #![proptest_config(ProptestConfig::with_cases(12))]

    #[test]
    fn nothing_over_the_limit_is_accepted(over in 1usize..64, frame in server_frame()) {
        // A well-formed `data` frame of exactly MAX_FRAME_LEN bytes decodes...
        let fits = |len: usize| {
            // Everything but the payload: map header, keys, tag, sid, bin32 header.
            let overhead = codec::encode(&ServerFrame::Data(Data {
                sid: StreamId::STDOUT,
                bytes: ByteBuf::from(vec![0; 70_000]),
            }))
            .len()
                - 70_000;
            ServerFrame::Data(Data {
                sid: StreamId::STDOUT,
                bytes: ByteBuf::from(vec![7; len - overhead]),
            })
        };
        let at_limit = codec::encode(&fits(MAX_FRAME_LEN));
        prop_assert_eq!(at_limit.len(), MAX_FRAME_LEN);
        prop_assert!(codec::decode::<ServerFrame>(&at_limit).is_ok());
        // ...and one a few bytes longer is refused before parsing, in both
        // directions, however well-formed.
        let too_long = codec::encode(&fits(MAX_FRAME_LEN + over));
        prop_assert_eq!(too_long.len(), MAX_FRAME_LEN + over);
        let refused = |r: Result<(), DecodeError>| {
            matches!(r, Err(DecodeError::TooLarge { len, limit })
                if len == MAX_FRAME_LEN + over && limit == MAX_FRAME_LEN)
        };
        prop_assert!(refused(codec::decode::<ServerFrame>(&too_long).map(drop)));
        prop_assert!(refused(codec::decode::<ClientFrame>(&too_long).map(drop)));
        // A valid frame padded past the limit with trailing garbage too.
        let mut padded = codec::encode(&frame);
        padded.resize(MAX_FRAME_LEN + over, 0xc0);
        prop_assert!(refused(codec::decode::<ServerFrame>(&padded).map(drop)));
        prop_assert!(refused(codec::decode::<ClientFrame>(&padded).map(drop)));
    }
}

// ---------------------------------------------------------------------------
// Secure channel properties.
// ---------------------------------------------------------------------------

/// A client → server channel: the client's sealer and the server's opener.
fn channel() -> (Sealer, Opener) {
    let device = StaticKey::generate().expect("a device key");
    let server = StaticKey::generate().expect("a server key");
    let (mut initiator, first) = Initiator::start(&device).expect("handshake 1");
    let (responder, second) = Responder::respond(&server, &first).expect("handshake 2");
    initiator.read_response(&second).expect("handshake 2 read");
    let (third, client) = initiator.finish().expect("handshake 3");
    let (_, server_channel) = responder.finish(&third).expect("handshake 3 read");
    let (sealer, _) = client.split();
    let (_, opener) = server_channel.split();
    (sealer, opener)
}

/// Plaintext frames: mostly small, sometimes spanning several Noise pieces.
fn plaintext() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        8 => vec(any::<u8>(), 0..300),
        1 => (MAX_PIECE - 2..MAX_PIECE * 2 + 3, any::<u8>())
            .prop_map(|(len, seed)| (0..len).map(|i| (i as u8).wrapping_mul(31) ^ seed).collect()),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(100))]

    #[test]
    fn sealed_sequences_open_in_order(frames in vec(plaintext(), 1..8)) {
        let (mut sealer, mut opener) = channel();
        let sealed: Vec<Vec<u8>> = frames
            .iter()
            .map(|f| sealer.seal(f).expect("sealing a frame under the limit"))
            .collect();
        for (frame, message) in frames.iter().zip(&sealed) {
            prop_assert_eq!(&opener.open(message).expect("a sealed frame opens"), frame);
            // A replay of what just opened is refused.
            prop_assert!(opener.open(message).is_err());
        }
    }

    // The bench-only `insecure-plaintext-bench` build authenticates nothing.
    #[cfg(not(feature = "insecure-plaintext-bench"))]
    #[test]
    fn any_flipped_bit_is_detected(
        frames in vec(plaintext(), 1..5),
        pick in any::<prop::sample::Index>(),
        bit in any::<prop::sample::Index>(),
    ) {
        let (mut sealer, mut opener) = channel();
        let sealed: Vec<Vec<u8>> = frames
            .iter()
            .map(|f| sealer.seal(f).expect("sealing a frame under the limit"))
            .collect();
        let k = pick.index(sealed.len());
        for (frame, message) in frames.iter().zip(&sealed).take(k) {
            prop_assert_eq!(&opener.open(message).expect("a sealed frame opens"), frame);
        }
        let mut tampered = sealed[k].clone();
        let bit = bit.index(tampered.len() * 8);
        tampered[bit / 8] ^= 1 << (bit % 8);
        prop_assert!(
            matches!(opener.open(&tampered), Err(SecureError::Tampered)),
            "a flipped bit {} of message {} was accepted", bit, k
        );
        // A failed single-piece message consumes no nonce, so the genuine
        // message still opens. (A failure in a later piece of a longer
        // message leaves the opener behind: as fatal as the session end that
        // a tampered message causes anyway.)
        if frames[k].len() <= MAX_PIECE {
            prop_assert_eq!(&opener.open(&sealed[k]).expect("the genuine message opens"), &frames[k]);
        }
    }

    /// A sealed message is a run of pieces, each authenticated by its nonce
    /// and carrying an encrypted "last piece" flag: a message cut at a piece
    /// boundary, or two messages sent as one, are refused by the channel.
    #[test]
    fn regrouped_pieces_never_yield_a_frame(
        frames in vec(prop_oneof![
            3 => server_frame(),
            1 => (MAX_PIECE - 40..MAX_PIECE * 2 + 40).prop_map(|len| ServerFrame::Data(Data {
                sid: StreamId::STDOUT,
                bytes: ByteBuf::from(vec![0x5a; len]),
            })),
        ], 1..5),
        cuts in vec(any::<bool>(), 0..16),
    ) {
        let (mut sealer, mut opener) = channel();
        // Every piece of every message, and which pieces each message spans.
        let mut pieces: Vec<Vec<u8>> = Vec::new();
        let mut messages = Vec::new();
        for frame in &frames {
            let sealed = sealer.seal(&codec::encode(frame)).expect("sealing a frame");
            let first = pieces.len();
            let mut rest = &sealed[..];
            while !rest.is_empty() {
                let len = 2 + usize::from(u16::from_be_bytes([rest[0], rest[1]]));
                pieces.push(rest[..len].to_vec());
                rest = &rest[len..];
            }
            messages.push((first, pieces.len()));
        }
        // Regroup: after each piece, end a message where `cuts` says (and at the end).
        let mut start = 0;
        for end in 1..=pieces.len() {
            if end < pieces.len() && !cuts.get(end - 1).copied().unwrap_or(false) {
                continue;
            }
            let message = pieces[start..end].concat();
            match messages.iter().position(|&m| m == (start, end)) {
                Some(i) => {
                    let opened = opener.open(&message).expect("a whole message opens");
                    prop_assert_eq!(codec::decode::<ServerFrame>(&opened).ok(), Some(frames[i].clone()));
                }
                None => {
                    // The channel itself refuses a frame cut short or glued
                    // to the next (the last piece is flagged inside the
                    // encryption); after that it is unusable, by design.
                    prop_assert!(opener.open(&message).is_err(), "pieces {}..{} opened", start, end);
                    break;
                }
            }
            start = end;
        }
    }

    #[test]
    fn a_dropped_message_is_detected(frames in vec(vec(any::<u8>(), 0..64), 2..6), skip in any::<prop::sample::Index>()) {
        let (mut sealer, mut opener) = channel();
        let sealed: Vec<Vec<u8>> = frames
            .iter()
            .map(|f| sealer.seal(f).expect("sealing a frame under the limit"))
            .collect();
        // Skip one message: every later one is out of order and refused.
        let k = skip.index(sealed.len() - 1);
        for message in &sealed[..k] {
            prop_assert!(opener.open(message).is_ok());
        }
        for message in &sealed[k + 1..] {
            prop_assert!(opener.open(message).is_err());
        }
    }
}
