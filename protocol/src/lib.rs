//! The terminalwire wire protocol, free of I/O.
//!
//! A terminalwire session is one WebSocket connection whose subprotocol is
//! [`SUBPROTOCOL`]. Every binary WebSocket message carries exactly one frame:
//! a MessagePack map with string keys whose `t` entry names the frame type.
//! The client speaks [`ClientFrame`]s, the server [`ServerFrame`]s. This crate
//! knows nothing of sockets or async runtimes: it turns frames into bytes and
//! back, negotiates the version and keeps the flow-control books, so the client,
//! the server SDK, tests and other-language implementations share one truth.
//!
//! The full wire specification, with golden vectors, is `PROTOCOL.md` beside this
//! crate's `Cargo.toml`.
//!
//! # Layout
//!
//! - [`frame`]: the message types, one enum per direction, every variant documented.
//! - [`codec`]: [`encode`](codec::encode) / [`decode`](codec::decode) between frames and
//!   bytes, with typed errors and an "unknown" value for tags from newer peers.
//! - [`copy`]: copying frame-sized byte slices without glibc's slow `memcpy`
//!   case on AMD processors.
//! - [`handshake`]: version ranges and [`negotiate`].
//! - [`flow`]: credit-based flow control ([`SendCredit`](flow::SendCredit) for the
//!   sender, [`ReceiveWindow`](flow::ReceiveWindow) for the receiver).
//! - [`resume`]: sequence numbers, acknowledgements and replay for resuming a
//!   session on a new connection, and the client's memory of executed requests.
//! - [`liveness`]: the idle deadline of a silent peer, moved lazily, and one
//!   timer for a session loop's deadlines.
//! - [`linger`]: when to poll for a fast peer's answer for a few microseconds
//!   instead of sleeping.
//! - [`report`]: an error and its causes as one line for a user.
//! - [`secure`]: the Noise XX handshake and sealed frames inside the WebSocket
//!   (pinned server key, device key, AEAD on every frame).
//!
//! # Cargo features
//!
//! - `insecure-plaintext-bench` (off by default; **benchmarks only, insecure**):
//!   frames after the handshake are sent unencrypted and unauthenticated, with
//!   the same framing, so that the benchmark can measure what the encryption
//!   costs ([`secure::ENCRYPTED`] is then `false`). No crate of the workspace
//!   enables it; a build with it and a build without it refuse each other in
//!   the handshake. See the [`secure`] module.
//!
//! # Example
//!
//! ```
//! use terminalwire_protocol::{codec, ServerFrame, frame::Exit};
//!
//! let bytes = codec::encode(&ServerFrame::Exit(Exit { status: 3 }));
//! let back: ServerFrame = codec::decode(&bytes).unwrap();
//! assert_eq!(back, ServerFrame::Exit(Exit { status: 3 }));
//! ```

#![forbid(unsafe_code)]

pub mod codec;
pub mod copy;
pub mod flow;
pub mod frame;
pub mod handshake;
pub mod linger;
pub mod liveness;
pub mod report;
pub mod resume;
pub mod secure;

pub use codec::{DecodeError, Frame};
pub use frame::{ClientFrame, ErrorCode, RequestId, ServerFrame, StreamId};
pub use handshake::{VersionRange, negotiate};

/// The WebSocket subprotocol name of this protocol. The client offers it in
/// `Sec-WebSocket-Protocol`; the server must echo it.
pub const SUBPROTOCOL: &str = "terminalwire-rs.v1";

/// The protocol versions this crate implements.
pub const SUPPORTED_VERSIONS: VersionRange = VersionRange { min: 1, max: 1 };

/// Largest encoded frame a peer may send, in bytes. Receivers reject larger
/// frames before decoding them.
pub const MAX_FRAME_LEN: usize = 1024 * 1024;

/// Deepest nesting of MessagePack maps and arrays in a frame, counting the
/// frame's own map as 1. Receivers reject deeper frames, which bounds the
/// decoder's recursion.
pub const MAX_DEPTH: usize = 32;

/// Most MessagePack values in a frame (every map, array, key and value
/// counts, the frame's own map included). Decoding builds about 20–40 bytes
/// for each (serde's buffer of a tagged operation or reply, a `String` per
/// argument): a 1 MiB frame of a million one-byte values took 23–40 MiB
/// for a moment, and this keeps it to a few. The largest frames the
/// reference programs send (a listing of 10 000 entries: about 50 000
/// values) fit with room.
pub const MAX_VALUES: usize = 128 * 1024;

/// Most bytes either end's WebSocket keeps queued for writing (tungstenite's
/// `max_write_buffer_size`): its write buffer (128 KiB, tungstenite's
/// default), one sealed message and a pong. Unbounded, as it is by default,
/// a peer that sends pings and reads nothing grows it by a pong per ping.
/// Bounded, a full buffer keeps only the latest pong, and a send waits for
/// the peer to read as it does for the socket.
pub const MAX_WRITE_BUFFER: usize = 128 * 1024 + 2 * secure::MAX_SEALED_LEN;

/// Default largest payload of one `data` frame, in bytes.
pub const DEFAULT_MAX_CHUNK: u32 = 64 * 1024;

/// Smallest `max_chunk` a peer may announce (section 5.1 of `PROTOCOL.md`):
/// a smaller one makes every few bytes a frame of their own, each encoded,
/// sealed and sent, and the reference server refuses it.
pub const MIN_CHUNK: u32 = 1024;

/// Default initial flow-control window of a stream, in bytes.
pub const DEFAULT_WINDOW: u32 = 1024 * 1024;

/// Requests a server may have in flight at once: a client may treat more as
/// a protocol violation, so a server queues the rest.
pub const MAX_REQUESTS_IN_FLIGHT: usize = 64;
