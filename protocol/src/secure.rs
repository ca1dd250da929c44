//! The end-to-end secure channel inside the WebSocket: a Noise handshake that
//! authenticates both ends by their long-term keys, then every frame sealed
//! with an AEAD.
//!
//! Pattern `Noise_XX_25519_ChaChaPoly_BLAKE2s` (via the `snow` crate), with
//! the subprotocol name as prologue. The client is the initiator; both sides
//! learn the other's static public key during the handshake, so the client
//! can pin the server's key (trust on first use, refuse on change) and the
//! server knows the device by its key.
//!
//! Handshake, one WebSocket binary message each: client → `e`; server →
//! `e, ee, s, es`; client → `s, se`. All handshake payloads are empty. After
//! that, each WebSocket binary message is one sealed frame: the plaintext
//! frame (MessagePack) cut into pieces of at most [`MAX_PIECE`] bytes, each
//! encrypted with the next nonce of its direction and written as a 2-byte
//! big-endian length followed by the ciphertext of one flag byte (1 on the
//! frame's last piece, 0 before) and the piece, plus the 16-byte tag. The
//! flag is encrypted and authenticated, so a frame cannot be cut short or
//! two frames glued together without the receiver noticing.
//!
//! Sans-I/O: callers move the bytes.
//!
//! # The `insecure-plaintext-bench` feature: benchmarks only, insecure
//!
//! Built with the cargo feature `insecure-plaintext-bench` (off by default,
//! enabled by no crate of the workspace; `bench/run.sh` builds a separate
//! pair of binaries with it for figure 6), [`ENCRYPTED`] is `false` and the
//! channel **does not encrypt or authenticate anything**: it exists only to
//! measure what the AEAD costs. The handshake runs unchanged (both static
//! keys are proven, the client pins the server's key, the server learns the
//! device key), except that its second and third messages carry
//! [`PLAINTEXT_MARKER`] as their payload. After it, [`Sealer::seal`] and
//! [`Opener::open`] keep the same framing (length prefix, flag byte, piece,
//! a 16-byte slot where the tag goes) and the same code path, but copy the
//! piece in the clear and fill the tag slot with `PLAINTXT` and the piece's
//! counter (little-endian `u64`), so that order and replays are still
//! checked (not tampering). A build with the feature and a build without it
//! refuse each other during the handshake, each with an error naming the
//! feature.

use std::fmt;

use base64::Engine as _;
#[cfg(not(feature = "insecure-plaintext-bench"))]
use ring::aead::Aad;
use ring::aead::{CHACHA20_POLY1305, LessSafeKey, Nonce, UnboundKey};
use sha2::{Digest, Sha256};
use snow::{Builder, HandshakeState};

use crate::{MAX_FRAME_LEN, SUBPROTOCOL};

/// The Noise protocol name.
pub const NOISE_PARAMS: &str = "Noise_XX_25519_ChaChaPoly_BLAKE2s";
/// Largest part of a frame carried by one Noise transport message (its
/// plaintext is one flag byte, then this part).
pub const MAX_PIECE: usize = 65535 - TAG_LEN - 1;
/// First plaintext byte of a piece that more pieces of the frame follow.
const MORE: u8 = 0;
/// First plaintext byte of a frame's last piece.
const LAST: u8 = 1;
/// AEAD tag length.
pub const TAG_LEN: usize = 16;
/// Longest sealed WebSocket message: a [`MAX_FRAME_LEN`] frame with the
/// length prefix and tag of each piece.
pub const MAX_SEALED_LEN: usize =
    MAX_FRAME_LEN + (MAX_FRAME_LEN / MAX_PIECE + 1) * (2 + 1 + TAG_LEN);
/// Longest handshake message accepted.
pub const MAX_HANDSHAKE_LEN: usize = 1024;

/// Whether frames are encrypted and authenticated: `true` unless this crate
/// was built with the bench-only `insecure-plaintext-bench` feature (see the
/// [module documentation](self)).
pub const ENCRYPTED: bool = !cfg!(feature = "insecure-plaintext-bench");

/// The payload of the second and third handshake messages of a build with
/// the `insecure-plaintext-bench` feature (empty without it). Both kinds of
/// build recognise it, so that they refuse each other with a clear error.
pub const PLAINTEXT_MARKER: &[u8] = b"terminalwire insecure-plaintext-bench";

/// This build's payload of the second and third handshake messages.
const HANDSHAKE_PAYLOAD: &[u8] = if ENCRYPTED { b"" } else { PLAINTEXT_MARKER };

/// First bytes of the tag slot of a piece sent in the clear (the piece's
/// counter follows).
#[cfg(feature = "insecure-plaintext-bench")]
const PLAINTEXT_TAG: &[u8; 8] = b"PLAINTXT";

/// Why the secure channel failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SecureError {
    /// A handshake message was malformed or did not authenticate.
    #[error("the secure handshake failed: {0}")]
    Handshake(String),
    /// A sealed frame was malformed, truncated or tampered with.
    #[error("a sealed frame did not authenticate (tampered, truncated or out of order)")]
    Tampered,
    /// A frame is larger than the protocol allows.
    #[error("a sealed frame of {len} bytes is over the limit")]
    TooLarge {
        /// Its length.
        len: usize,
    },
    /// A key file's content is not a key.
    #[error("invalid key: {0}")]
    InvalidKey(String),
}

fn params() -> snow::params::NoiseParams {
    // The constant is a valid pattern name.
    NOISE_PARAMS
        .parse()
        .unwrap_or_else(|_| unreachable!("NOISE_PARAMS parses"))
}

/// A long-term X25519 key pair (a server's identity or a client's device key).
#[derive(Clone, PartialEq, Eq)]
pub struct StaticKey {
    private: Vec<u8>,
    public: Vec<u8>,
}

impl fmt::Debug for StaticKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StaticKey")
            .field("fingerprint", &fingerprint(&self.public))
            .finish_non_exhaustive()
    }
}

impl StaticKey {
    /// A new random key pair.
    pub fn generate() -> Result<StaticKey, SecureError> {
        let pair = Builder::new(params())
            .generate_keypair()
            .map_err(|error| SecureError::InvalidKey(error.to_string()))?;
        Ok(StaticKey {
            private: pair.private,
            public: pair.public,
        })
    }

    /// The public half.
    pub fn public(&self) -> &[u8] {
        &self.public
    }

    /// `SHA256:<base64>` of the public key.
    pub fn fingerprint(&self) -> String {
        fingerprint(&self.public)
    }

    /// The key file format: two lines, `private <hex>` and `public <hex>`.
    pub fn to_file_text(&self) -> String {
        format!(
            "# terminalwire static key ({NOISE_PARAMS}); keep private\nprivate {}\npublic {}\n",
            hex(&self.private),
            hex(&self.public)
        )
    }

    /// Parses [`to_file_text`](StaticKey::to_file_text).
    pub fn from_file_text(text: &str) -> Result<StaticKey, SecureError> {
        let mut private = None;
        let mut public = None;
        for line in text.lines().map(str::trim) {
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            match line.split_once(' ') {
                Some(("private", value)) => private = Some(unhex(value.trim())?),
                Some(("public", value)) => public = Some(unhex(value.trim())?),
                _ => return Err(SecureError::InvalidKey(format!("unexpected line {line:?}"))),
            }
        }
        match (private, public) {
            (Some(private), Some(public)) if private.len() == 32 && public.len() == 32 => {
                Ok(StaticKey { private, public })
            }
            _ => Err(SecureError::InvalidKey(
                "expected 32-byte `private` and `public` lines".into(),
            )),
        }
    }
}

/// `SHA256:<base64, no padding>` of a public key, like OpenSSH's.
pub fn fingerprint(public: &[u8]) -> String {
    let digest = Sha256::digest(public);
    format!(
        "SHA256:{}",
        base64::engine::general_purpose::STANDARD_NO_PAD.encode(digest)
    )
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(text: &str) -> Result<Vec<u8>, SecureError> {
    if !text.len().is_multiple_of(2) {
        return Err(SecureError::InvalidKey("odd hex length".into()));
    }
    (0..text.len())
        .step_by(2)
        .map(|i| {
            text.get(i..i + 2)
                .and_then(|pair| u8::from_str_radix(pair, 16).ok())
                .ok_or_else(|| SecureError::InvalidKey("not hex".into()))
        })
        .collect()
}

fn handshake_error(error: snow::Error) -> SecureError {
    SecureError::Handshake(error.to_string())
}

/// Checks that the peer (`"server"` or `"client"`) was built like this side:
/// both encrypt, or both have the `insecure-plaintext-bench` feature.
/// `payload` is that of its second or third handshake message.
fn check_peer_build(payload: &[u8], peer: &str) -> Result<(), SecureError> {
    let plaintext_peer = payload == PLAINTEXT_MARKER;
    if ENCRYPTED && plaintext_peer {
        return Err(SecureError::Handshake(format!(
            "the {peer} was built with the insecure-plaintext-bench feature (benchmarks only): \
             it sends frames unencrypted; refused"
        )));
    }
    if !ENCRYPTED && !plaintext_peer {
        return Err(SecureError::Handshake(format!(
            "this program was built with the insecure-plaintext-bench feature (benchmarks only, \
             no end-to-end encryption); the {peer} encrypts end to end and can only be reached \
             by a normal build"
        )));
    }
    Ok(())
}

/// The client's side of the handshake.
pub struct Initiator {
    state: HandshakeState,
}

impl fmt::Debug for Initiator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Initiator").finish_non_exhaustive()
    }
}

impl Initiator {
    /// Starts the handshake with the device key; returns the first message.
    pub fn start(device: &StaticKey) -> Result<(Initiator, Vec<u8>), SecureError> {
        let mut state = Builder::new(params())
            .local_private_key(&device.private)
            .and_then(|builder| builder.prologue(SUBPROTOCOL.as_bytes()))
            .and_then(Builder::build_initiator)
            .map_err(handshake_error)?;
        let mut message = vec![0u8; MAX_HANDSHAKE_LEN];
        let len = state
            .write_message(&[], &mut message)
            .map_err(handshake_error)?;
        message.truncate(len);
        Ok((Initiator { state }, message))
    }

    /// Reads the server's answer; returns the server's static public key, to
    /// be checked against the pin before [`finish`](Initiator::finish).
    pub fn read_response(&mut self, message: &[u8]) -> Result<Vec<u8>, SecureError> {
        if message.len() > MAX_HANDSHAKE_LEN {
            return Err(SecureError::Handshake("handshake message too long".into()));
        }
        let mut payload = vec![0u8; MAX_HANDSHAKE_LEN];
        let len = self
            .state
            .read_message(message, &mut payload)
            .map_err(handshake_error)?;
        check_peer_build(&payload[..len], "server")?;
        let key = self
            .state
            .get_remote_static()
            .map(<[u8]>::to_vec)
            .ok_or_else(|| SecureError::Handshake("the server sent no static key".into()))?;
        check_public_key(&key)?;
        Ok(key)
    }

    /// Writes the last handshake message and opens the channel.
    pub fn finish(mut self) -> Result<(Vec<u8>, Channel), SecureError> {
        let mut message = vec![0u8; MAX_HANDSHAKE_LEN];
        let len = self
            .state
            .write_message(HANDSHAKE_PAYLOAD, &mut message)
            .map_err(handshake_error)?;
        message.truncate(len);
        Ok((message, Channel::open(self.state)?))
    }
}

/// The server's side of the handshake.
pub struct Responder {
    state: HandshakeState,
}

impl fmt::Debug for Responder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Responder").finish_non_exhaustive()
    }
}

impl Responder {
    /// Reads the client's first message with the server key; returns the
    /// answer to send.
    pub fn respond(server: &StaticKey, first: &[u8]) -> Result<(Responder, Vec<u8>), SecureError> {
        if first.len() > MAX_HANDSHAKE_LEN {
            return Err(SecureError::Handshake("handshake message too long".into()));
        }
        let mut state = Builder::new(params())
            .local_private_key(&server.private)
            .and_then(|builder| builder.prologue(SUBPROTOCOL.as_bytes()))
            .and_then(Builder::build_responder)
            .map_err(handshake_error)?;
        let mut payload = vec![0u8; MAX_HANDSHAKE_LEN];
        state
            .read_message(first, &mut payload)
            .map_err(handshake_error)?;
        let mut message = vec![0u8; MAX_HANDSHAKE_LEN];
        let len = state
            .write_message(HANDSHAKE_PAYLOAD, &mut message)
            .map_err(handshake_error)?;
        message.truncate(len);
        Ok((Responder { state }, message))
    }

    /// Reads the client's last message; returns the client's device public
    /// key and the open channel.
    pub fn finish(mut self, last: &[u8]) -> Result<(Vec<u8>, Channel), SecureError> {
        if last.len() > MAX_HANDSHAKE_LEN {
            return Err(SecureError::Handshake("handshake message too long".into()));
        }
        let mut payload = vec![0u8; MAX_HANDSHAKE_LEN];
        let len = self
            .state
            .read_message(last, &mut payload)
            .map_err(handshake_error)?;
        check_peer_build(&payload[..len], "client")?;
        let device = self
            .state
            .get_remote_static()
            .map(<[u8]>::to_vec)
            .ok_or_else(|| SecureError::Handshake("the client sent no device key".into()))?;
        check_public_key(&device)?;
        Ok((device, Channel::open(self.state)?))
    }
}

/// Both directions of an open channel; split it to seal and open
/// concurrently.
#[derive(Debug)]
pub struct Channel {
    sealer: Sealer,
    opener: Opener,
}

impl Channel {
    fn open(mut state: HandshakeState) -> Result<Channel, SecureError> {
        if !state.is_handshake_finished() {
            return Err(SecureError::Handshake(
                "the handshake is not finished".into(),
            ));
        }
        // Noise's Split(): the initiator sends with the first key. The
        // transport is Noise's ChaChaPoly done here with `ring` rather than
        // snow's, so that a piece is encrypted and decrypted where it lies in
        // the message instead of through scratch buffers (same bytes on the
        // wire: 96-bit nonce of 4 zero bytes and the little-endian counter,
        // empty associated data).
        let (first, second) = state.dangerously_get_raw_split();
        let (send, receive) = if state.is_initiator() {
            (first, second)
        } else {
            (second, first)
        };
        Ok(Channel {
            sealer: Sealer {
                key: Transport::new(&send)?,
                nonce: 0,
            },
            opener: Opener {
                key: Transport::new(&receive)?,
                nonce: 0,
            },
        })
    }

    /// The sending and receiving halves.
    pub fn split(self) -> (Sealer, Opener) {
        (self.sealer, self.opener)
    }
}

/// One direction's ChaCha20-Poly1305 key (made from the split key in both
/// builds; not used by the `insecure-plaintext-bench` one).
struct Transport(
    #[cfg_attr(
        feature = "insecure-plaintext-bench",
        allow(dead_code, reason = "the plaintext bench build seals nothing")
    )]
    LessSafeKey,
);

impl Transport {
    fn new(key: &[u8; 32]) -> Result<Transport, SecureError> {
        UnboundKey::new(&CHACHA20_POLY1305, key)
            .map(|key| Transport(LessSafeKey::new(key)))
            .map_err(|_| SecureError::Handshake("unusable transport key".into()))
    }

    /// Encrypts `in_out` in place with counter `n`; returns the tag.
    #[cfg(not(feature = "insecure-plaintext-bench"))]
    #[inline]
    fn seal(&self, n: u64, in_out: &mut [u8]) -> Result<impl AsRef<[u8]> + use<>, SecureError> {
        self.0
            .seal_in_place_separate_tag(noise_nonce(n)?, Aad::empty(), in_out)
            .map_err(|_| SecureError::Tampered)
    }

    /// Decrypts `in_out` (ciphertext, then tag) in place with counter `n`;
    /// returns the plaintext part.
    #[cfg(not(feature = "insecure-plaintext-bench"))]
    #[inline]
    fn open<'a>(&self, n: u64, in_out: &'a mut [u8]) -> Result<&'a mut [u8], SecureError> {
        self.0
            .open_in_place(noise_nonce(n)?, Aad::empty(), in_out)
            .map_err(|_| SecureError::Tampered)
    }

    /// INSECURE, benchmarks only: leaves `in_out` in the clear; the "tag" is
    /// [`PLAINTEXT_TAG`] and the counter.
    #[cfg(feature = "insecure-plaintext-bench")]
    #[inline]
    fn seal(&self, n: u64, _in_out: &mut [u8]) -> Result<impl AsRef<[u8]> + use<>, SecureError> {
        noise_nonce(n)?;
        Ok(plaintext_tag(n))
    }

    /// INSECURE, benchmarks only: checks the tag slot holds
    /// [`PLAINTEXT_TAG`] and counter `n` (so a sealed frame, a replay or a
    /// piece out of order is refused); returns the part in the clear before it.
    #[cfg(feature = "insecure-plaintext-bench")]
    #[inline]
    fn open<'a>(&self, n: u64, in_out: &'a mut [u8]) -> Result<&'a mut [u8], SecureError> {
        noise_nonce(n)?;
        let at = in_out
            .len()
            .checked_sub(TAG_LEN)
            .ok_or(SecureError::Tampered)?;
        let (plain, tag) = in_out.split_at_mut(at);
        if *tag != plaintext_tag(n) {
            return Err(SecureError::Tampered);
        }
        Ok(plain)
    }
}

/// The tag slot of piece `n` sent in the clear.
#[cfg(feature = "insecure-plaintext-bench")]
fn plaintext_tag(n: u64) -> [u8; TAG_LEN] {
    let mut tag = [0u8; TAG_LEN];
    tag[..8].copy_from_slice(PLAINTEXT_TAG);
    tag[8..].copy_from_slice(&n.to_le_bytes());
    tag
}

impl fmt::Debug for Transport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Transport")
    }
}

/// Noise's ChaChaPoly nonce for counter `n`; the last counter value is
/// reserved by Noise, so a channel that reaches it refuses to go on.
fn noise_nonce(n: u64) -> Result<Nonce, SecureError> {
    if n == u64::MAX {
        return Err(SecureError::Tampered);
    }
    let mut nonce = [0u8; 12];
    nonce[4..].copy_from_slice(&n.to_le_bytes());
    Ok(Nonce::assume_unique_for_key(nonce))
}

/// Seals outgoing frames.
#[derive(Debug)]
pub struct Sealer {
    key: Transport,
    nonce: u64,
}

impl Sealer {
    /// Seals one plaintext frame into one WebSocket message.
    pub fn seal(&mut self, frame: &[u8]) -> Result<Vec<u8>, SecureError> {
        if frame.len() > MAX_FRAME_LEN {
            return Err(SecureError::TooLarge { len: frame.len() });
        }
        let pieces = frame.len().div_ceil(MAX_PIECE).max(1);
        let mut out = Vec::with_capacity(frame.len() + pieces * (2 + 1 + TAG_LEN));
        let mut chunks: Vec<&[u8]> = frame.chunks(MAX_PIECE).collect();
        if chunks.is_empty() {
            chunks.push(&[]);
        }
        let last_index = chunks.len() - 1;
        for (index, chunk) in chunks.into_iter().enumerate() {
            let len = 1 + chunk.len() + TAG_LEN;
            let prefix = u16::try_from(len).map_err(|_| SecureError::TooLarge { len })?;
            out.extend_from_slice(&prefix.to_be_bytes());
            // The piece is written once, where it goes, and encrypted there.
            let start = out.len();
            out.push(if index == last_index { LAST } else { MORE });
            out.extend_from_slice(chunk);
            let tag = self.key.seal(self.nonce, &mut out[start..])?;
            out.extend_from_slice(tag.as_ref());
            self.nonce += 1;
        }
        Ok(out)
    }
}

/// Opens incoming frames.
#[derive(Debug)]
pub struct Opener {
    key: Transport,
    nonce: u64,
}

/// An opened frame: `buffer[start..]`, so that the caller can take it without
/// moving the bytes (see [`Opener::open_unmoved`]).
#[derive(Debug)]
pub struct Opened {
    /// The bytes; the frame starts at `start`.
    pub buffer: Vec<u8>,
    /// Where the frame starts in `buffer` (0 or 1).
    pub start: usize,
}

impl Opened {
    /// The frame as its own vector (moves the bytes when `start` is not 0).
    pub fn into_vec(mut self) -> Vec<u8> {
        self.buffer.drain(..self.start);
        self.buffer
    }
}

impl Opener {
    /// Opens one WebSocket message into the plaintext frame.
    pub fn open(&mut self, message: &[u8]) -> Result<Vec<u8>, SecureError> {
        self.open_unmoved(message).map(Opened::into_vec)
    }

    /// [`open`](Opener::open) without the final move of the bytes: each piece
    /// is copied once into the output and decrypted there, its flag byte on
    /// the byte before its part (the previous part's last byte, put back
    /// after; for the first piece, a spare byte at the start).
    pub fn open_unmoved(&mut self, mut message: &[u8]) -> Result<Opened, SecureError> {
        if message.is_empty() {
            return Err(SecureError::Tampered);
        }
        let mut buffer = Vec::with_capacity(message.len());
        // The spare byte the first piece's flag lands on.
        buffer.push(0);
        let mut nonce = self.nonce;
        let mut ended = false;
        while !message.is_empty() {
            if ended {
                // Bytes after the last piece: frames glued together.
                return Err(SecureError::Tampered);
            }
            let (prefix, rest) = message.split_at_checked(2).ok_or(SecureError::Tampered)?;
            let len = usize::from(u16::from_be_bytes([prefix[0], prefix[1]]));
            let (piece, rest) = rest.split_at_checked(len).ok_or(SecureError::Tampered)?;
            if len < TAG_LEN + 1 {
                return Err(SecureError::Tampered);
            }
            let part_len = len - TAG_LEN - 1;
            if buffer.len() - 1 + part_len > MAX_FRAME_LEN {
                return Err(SecureError::TooLarge {
                    len: buffer.len() - 1 + part_len,
                });
            }
            let at = buffer.len() - 1;
            let kept = buffer[at];
            buffer.truncate(at);
            buffer.extend_from_slice(piece);
            let opened = self.key.open(nonce, &mut buffer[at..])?;
            let flag = opened.first().copied().ok_or(SecureError::Tampered)?;
            nonce += 1;
            ended = match flag {
                LAST => true,
                MORE => false,
                _ => return Err(SecureError::Tampered),
            };
            buffer[at] = kept;
            buffer.truncate(at + 1 + part_len);
            message = rest;
        }
        if !ended {
            // The frame's last piece never came: cut short.
            return Err(SecureError::Tampered);
        }
        // Only a message that opened whole moves the channel on.
        self.nonce = nonce;
        Ok(Opened { buffer, start: 1 })
    }
}

/// X25519 public keys of small order (libsodium's list; the top bit of the
/// last byte is ignored). With one of them, every Diffie-Hellman result is
/// the same whatever the private key, so anyone could present that "key":
/// a device or server identity must never be one.
const SMALL_ORDER_KEYS: [[u8; 32]; 7] = [
    [0; 32],
    [
        1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
        0, 0,
    ],
    [
        0xe0, 0xeb, 0x7a, 0x7c, 0x3b, 0x41, 0xb8, 0xae, 0x16, 0x56, 0xe3, 0xfa, 0xf1, 0x9f, 0xc4,
        0x6a, 0xda, 0x09, 0x8d, 0xeb, 0x9c, 0x32, 0xb1, 0xfd, 0x86, 0x62, 0x05, 0x16, 0x5f, 0x49,
        0xb8, 0x00,
    ],
    [
        0x5f, 0x9c, 0x95, 0xbc, 0xa3, 0x50, 0x8c, 0x24, 0xb1, 0xd0, 0xb1, 0x55, 0x9c, 0x83, 0xef,
        0x5b, 0x04, 0x44, 0x5c, 0xc4, 0x58, 0x1c, 0x8e, 0x86, 0xd8, 0x22, 0x4e, 0xdd, 0xd0, 0x9f,
        0x11, 0x57,
    ],
    [
        0xec, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
        0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
        0xff, 0x7f,
    ],
    [
        0xed, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
        0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
        0xff, 0x7f,
    ],
    [
        0xee, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
        0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
        0xff, 0x7f,
    ],
];

/// Refuses a peer's static key of small order (see [`SMALL_ORDER_KEYS`]).
pub fn check_public_key(key: &[u8]) -> Result<(), SecureError> {
    let Ok(key) = <&[u8; 32]>::try_from(key) else {
        return Err(SecureError::Handshake(format!(
            "a static key of {} bytes",
            key.len()
        )));
    };
    let small = SMALL_ORDER_KEYS
        .iter()
        .any(|bad| bad[..31] == key[..31] && bad[31] == key[31] & 0x7f);
    if small {
        return Err(SecureError::Handshake(
            "the peer's static key has small order (anyone could present it)".into(),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_order_keys_are_refused_and_real_ones_accepted() {
        use ring::agreement::{EphemeralPrivateKey, UnparsedPublicKey, X25519, agree_ephemeral};
        let rng = ring::rand::SystemRandom::new();
        for bad in SMALL_ORDER_KEYS {
            // Each listed key really is of small order: ring's X25519 refuses
            // the all-zero result it gives.
            let private = EphemeralPrivateKey::generate(&X25519, &rng).unwrap();
            let agreed = agree_ephemeral(private, &UnparsedPublicKey::new(&X25519, bad), |_| ());
            assert!(agreed.is_err(), "{bad:02x?} is not of small order");
            assert!(check_public_key(&bad).is_err());
            let mut high = bad;
            high[31] |= 0x80;
            assert!(check_public_key(&high).is_err(), "top bit set");
        }
        let real = StaticKey::generate().unwrap();
        check_public_key(&real.public).unwrap();
        assert!(check_public_key(&[1; 31]).is_err());
    }

    type Halves = (Sealer, Opener);

    fn pair() -> (Halves, Halves, Vec<u8>, Vec<u8>) {
        let device = StaticKey::generate().unwrap();
        let server = StaticKey::generate().unwrap();
        let (mut initiator, first) = Initiator::start(&device).unwrap();
        let (responder, second) = Responder::respond(&server, &first).unwrap();
        let server_seen = initiator.read_response(&second).unwrap();
        let (third, client) = initiator.finish().unwrap();
        let (device_seen, server_channel) = responder.finish(&third).unwrap();
        assert_eq!(server_seen, server.public());
        assert_eq!(device_seen, device.public());
        (
            client.split(),
            server_channel.split(),
            server_seen,
            device_seen,
        )
    }

    #[test]
    fn frames_round_trip_both_ways_including_large_ones() {
        let ((mut client_seal, mut client_open), (mut server_seal, mut server_open), _, _) = pair();
        for size in [
            0usize,
            1,
            MAX_PIECE - 1,
            MAX_PIECE,
            MAX_PIECE + 1,
            MAX_FRAME_LEN,
        ] {
            let frame: Vec<u8> = (0..size).map(|i| (i % 251) as u8).collect();
            let sealed = client_seal.seal(&frame).unwrap();
            if size >= 16 {
                // The first piece's part starts after the prefix and flag byte.
                if ENCRYPTED {
                    assert_ne!(&sealed[3..19], &frame[..16], "plaintext visible");
                } else {
                    assert_eq!(&sealed[3..19], &frame[..16], "the bench build copies");
                }
            }
            assert_eq!(server_open.open(&sealed).unwrap(), frame);
            let sealed = server_seal.seal(&frame).unwrap();
            assert_eq!(client_open.open(&sealed).unwrap(), frame);
        }
    }

    // The plaintext bench build authenticates nothing: a flipped byte of a
    // piece goes through (see `plaintext` below for what it still checks).
    #[cfg(not(feature = "insecure-plaintext-bench"))]
    #[test]
    fn tampering_replay_and_truncation_are_detected() {
        let ((mut client_seal, _), (_, mut server_open), _, _) = pair();
        let sealed = client_seal.seal(b"hello").unwrap();
        for i in 0..sealed.len() {
            let mut flipped = sealed.clone();
            flipped[i] ^= 0x01;
            assert!(server_open.open(&flipped).is_err(), "flip at {i} accepted");
        }
        for cut in 0..sealed.len() {
            assert!(server_open.open(&sealed[..cut]).is_err(), "cut at {cut}");
        }
        // Failed opens do not advance the nonce: the real message still opens once.
        assert_eq!(server_open.open(&sealed).unwrap(), b"hello");
        assert!(server_open.open(&sealed).is_err(), "a replay was accepted");
    }

    #[test]
    fn frames_cannot_be_cut_short_or_glued_together() {
        let ((mut client_seal, _), (_, mut server_open), _, _) = pair();
        let big: Vec<u8> = (0..MAX_PIECE + 10).map(|i| i as u8).collect();
        let sealed = client_seal.seal(&big).unwrap();
        let first_len = 2 + usize::from(u16::from_be_bytes([sealed[0], sealed[1]]));
        assert!(
            server_open.open(&sealed[..first_len]).is_err(),
            "the first piece alone is not a frame"
        );
        let ((mut client_seal, _), (_, mut server_open), _, _) = pair();
        let mut glued = client_seal.seal(b"one").unwrap();
        glued.extend(client_seal.seal(b"two").unwrap());
        assert!(
            server_open.open(&glued).is_err(),
            "two frames glued together"
        );
    }

    #[test]
    fn keys_round_trip_through_their_file_text_and_fingerprints_differ() {
        let key = StaticKey::generate().unwrap();
        let text = key.to_file_text();
        assert_eq!(StaticKey::from_file_text(&text).unwrap(), key);
        assert!(key.fingerprint().starts_with("SHA256:"));
        assert_ne!(
            key.fingerprint(),
            StaticKey::generate().unwrap().fingerprint()
        );
        for bad in ["", "private 00\npublic 00\n", "private zz\n", "secret 00\n"] {
            assert!(StaticKey::from_file_text(bad).is_err(), "{bad:?}");
        }
        assert!(!format!("{key:?}").contains(&hex(&key.private)));
    }

    #[test]
    fn a_wrong_prologue_or_garbage_fails_the_handshake() {
        let server = StaticKey::generate().unwrap();
        assert!(Responder::respond(&server, b"garbage").is_err());
        assert!(Responder::respond(&server, &[0u8; 4096]).is_err());
        let device = StaticKey::generate().unwrap();
        let (mut initiator, _) = Initiator::start(&device).unwrap();
        assert!(initiator.read_response(&[1, 2, 3]).is_err());
    }

    #[cfg(not(feature = "insecure-plaintext-bench"))]
    #[test]
    fn the_transport_is_noise_chachapoly_as_snow_does_it() {
        // Same handshake, then one side's channel against snow's own transport.
        let device = StaticKey::generate().unwrap();
        let server = StaticKey::generate().unwrap();
        let (mut initiator, first) = Initiator::start(&device).unwrap();
        let (responder, second) = Responder::respond(&server, &first).unwrap();
        initiator.read_response(&second).unwrap();
        let mut third = vec![0u8; MAX_HANDSHAKE_LEN];
        let len = initiator.state.write_message(&[], &mut third).unwrap();
        third.truncate(len);
        let snow_client = initiator.state.into_stateless_transport_mode().unwrap();
        let (_, channel) = responder.finish(&third).unwrap();
        let (mut seal, mut open) = channel.split();
        let frame: Vec<u8> = (0..MAX_PIECE + 100).map(|i| (i % 253) as u8).collect();
        // Server → client: our pieces open with snow.
        let sealed = seal.seal(&frame).unwrap();
        let mut plain = Vec::new();
        let (mut rest, mut nonce) = (&sealed[..], 0u64);
        while !rest.is_empty() {
            let len = usize::from(u16::from_be_bytes([rest[0], rest[1]]));
            let mut out = vec![0u8; len];
            let n = snow_client
                .read_message(nonce, &rest[2..2 + len], &mut out)
                .unwrap();
            plain.extend_from_slice(&out[1..n]);
            nonce += 1;
            rest = &rest[2 + len..];
        }
        assert_eq!(plain, frame);
        // Client → server: snow's piece opens with ours.
        let mut piece = vec![0u8; 64];
        let n = snow_client
            .write_message(0, b"\x01hello", &mut piece)
            .unwrap();
        let mut message = u16::try_from(n).unwrap().to_be_bytes().to_vec();
        message.extend_from_slice(&piece[..n]);
        assert_eq!(open.open(&message).unwrap(), b"hello");
    }

    /// The handshake payload of the other kind of build.
    fn other_build_payload() -> &'static [u8] {
        if ENCRYPTED { PLAINTEXT_MARKER } else { b"" }
    }

    #[test]
    fn a_peer_built_the_other_way_is_refused_by_name_in_the_handshake() {
        let device = StaticKey::generate().unwrap();
        let server = StaticKey::generate().unwrap();

        // A server of the other build answers the client's first message.
        let (mut initiator, first) = Initiator::start(&device).unwrap();
        let mut other_server = Builder::new(params())
            .local_private_key(&server.private)
            .and_then(|builder| builder.prologue(SUBPROTOCOL.as_bytes()))
            .and_then(Builder::build_responder)
            .unwrap();
        let mut scratch = vec![0u8; MAX_HANDSHAKE_LEN];
        other_server.read_message(&first, &mut scratch).unwrap();
        let mut second = vec![0u8; MAX_HANDSHAKE_LEN];
        let len = other_server
            .write_message(other_build_payload(), &mut second)
            .unwrap();
        second.truncate(len);
        let error = initiator.read_response(&second).unwrap_err().to_string();
        assert!(error.contains("insecure-plaintext-bench"), "{error}");
        assert!(error.contains("server"), "{error}");

        // A client of the other build finishes the handshake with a server of this one.
        let (mut initiator, first) = Initiator::start(&device).unwrap();
        let (responder, second) = Responder::respond(&server, &first).unwrap();
        initiator.state.read_message(&second, &mut scratch).unwrap();
        let mut third = vec![0u8; MAX_HANDSHAKE_LEN];
        let len = initiator
            .state
            .write_message(other_build_payload(), &mut third)
            .unwrap();
        third.truncate(len);
        let error = responder.finish(&third).unwrap_err().to_string();
        assert!(error.contains("insecure-plaintext-bench"), "{error}");
        assert!(error.contains("client"), "{error}");

        // Same builds agree; other payloads are ignored, as before.
        check_peer_build(HANDSHAKE_PAYLOAD, "server").unwrap();
        if ENCRYPTED {
            check_peer_build(b"something newer", "server").unwrap();
        } else {
            assert!(check_peer_build(b"something newer", "server").is_err());
        }
    }

    /// The bench-only build: same framing, bytes in the clear.
    #[cfg(feature = "insecure-plaintext-bench")]
    mod plaintext {
        use super::*;

        #[test]
        fn the_build_says_it_does_not_encrypt() {
            const { assert!(!ENCRYPTED) };
            assert_eq!(HANDSHAKE_PAYLOAD, PLAINTEXT_MARKER);
        }

        #[test]
        fn frames_are_framed_as_sealed_ones_but_in_the_clear() {
            let ((mut client_seal, mut client_open), (mut server_seal, mut server_open), _, _) =
                pair();
            let mut counter = 0u64;
            for size in [0usize, 1, 100, MAX_PIECE, MAX_PIECE + 1, MAX_FRAME_LEN] {
                let frame: Vec<u8> = (0..size).map(|i| (i % 251) as u8).collect();
                let sealed = client_seal.seal(&frame).unwrap();
                // Exactly the layout of a sealed frame: per piece, a 2-byte
                // length, the flag byte, the part and 16 bytes in the tag's place.
                let mut expected = Vec::new();
                let chunks: Vec<&[u8]> = if frame.is_empty() {
                    vec![&[]]
                } else {
                    frame.chunks(MAX_PIECE).collect()
                };
                let last = chunks.len() - 1;
                for (index, chunk) in chunks.into_iter().enumerate() {
                    let len = u16::try_from(1 + chunk.len() + TAG_LEN).unwrap();
                    expected.extend_from_slice(&len.to_be_bytes());
                    expected.push(if index == last { LAST } else { MORE });
                    expected.extend_from_slice(chunk);
                    expected.extend_from_slice(b"PLAINTXT");
                    expected.extend_from_slice(&counter.to_le_bytes());
                    counter += 1;
                }
                assert_eq!(sealed, expected, "frame of {size} bytes");
                assert_eq!(server_open.open(&sealed).unwrap(), frame);
                let sealed = server_seal.seal(&frame).unwrap();
                let opened = client_open.open_unmoved(&sealed).unwrap();
                assert_eq!(&opened.buffer[opened.start..], &frame[..]);
            }
        }

        #[test]
        fn replays_reordering_truncation_and_glued_frames_are_still_refused() {
            let ((mut seal, _), (_, mut open), _, _) = pair();
            let one = seal.seal(b"one").unwrap();
            let two = seal.seal(b"two").unwrap();
            assert!(matches!(open.open(&two), Err(SecureError::Tampered)));
            for cut in 0..one.len() {
                assert!(open.open(&one[..cut]).is_err(), "cut at {cut}");
            }
            let mut glued = one.clone();
            glued.extend_from_slice(&two);
            assert!(open.open(&glued).is_err(), "two frames glued together");
            assert_eq!(open.open(&one).unwrap(), b"one");
            assert!(open.open(&one).is_err(), "a replay was accepted");
            assert_eq!(open.open(&two).unwrap(), b"two");
            // A damaged tag slot is refused; a damaged part is not noticed.
            let three = seal.seal(b"three").unwrap();
            let mut bad_tag = three.clone();
            let at = bad_tag.len() - 1;
            bad_tag[at] ^= 1;
            assert!(open.open(&bad_tag).is_err());
            let mut bad_part = three.clone();
            bad_part[3] ^= 1;
            assert_eq!(open.open(&bad_part).unwrap(), b"uhree");
        }

        #[test]
        fn a_frame_really_sealed_with_chachapoly_is_refused() {
            let ((mut seal, _), (_, mut open), _, _) = pair();
            // What a normal build would send with the same key and counter.
            let mut piece = vec![LAST];
            piece.extend_from_slice(b"hello");
            let tag = seal
                .key
                .0
                .seal_in_place_separate_tag(
                    noise_nonce(0).unwrap(),
                    ring::aead::Aad::empty(),
                    &mut piece,
                )
                .unwrap();
            piece.extend_from_slice(tag.as_ref());
            let mut message = u16::try_from(piece.len()).unwrap().to_be_bytes().to_vec();
            message.extend_from_slice(&piece);
            assert!(matches!(open.open(&message), Err(SecureError::Tampered)));
            // The channel is not moved on by the refusal.
            assert_eq!(open.open(&seal.seal(b"hi").unwrap()).unwrap(), b"hi");
        }

        #[test]
        fn garbage_is_refused_without_panicking() {
            let ((_, _), (_, mut open), _, _) = pair();
            let mut state = 0x9e37_79b9_7f4a_7c15_u64;
            for len in 0..200usize {
                let garbage: Vec<u8> = (0..len)
                    .map(|_| {
                        state ^= state << 13;
                        state ^= state >> 7;
                        state ^= state << 17;
                        state as u8
                    })
                    .collect();
                assert!(open.open(&garbage).is_err(), "{garbage:02x?}");
            }
        }
    }
}
