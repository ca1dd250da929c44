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
//! `e, ee, s, es`; client → `s, se`. The handshake itself always uses the
//! ChaChaPoly of its name; only the transport AEAD after Noise's `Split()`
//! is negotiated ([`TransportCipher`]):
//!
//! - the first message's payload (in the clear, but mixed into the handshake
//!   hash, so that a change by anyone in the middle makes the second message
//!   fail to authenticate) is the client's **offer**: the MessagePack map
//!   `{"aead": [names]}` with the Noise names of the ciphers it accepts,
//!   `"AESGCM"` and/or `"ChaChaPoly"`. The reference client offers `AESGCM`
//!   only when its CPU has AES hardware ([`aes_hardware`]), and always
//!   `ChaChaPoly` ([`TransportCipher::defaults`]);
//! - the second message's payload (encrypted) is the server's **choice**:
//!   the map `{"aead": name}`, one of the offered ciphers. The reference
//!   server takes the first of its own list that the client offered: AESGCM
//!   when it has AES hardware too, else ChaChaPoly;
//! - the third message's payload is empty.
//!
//! Offer and choice are at most [`MAX_NEGOTIATION_LEN`] bytes; other keys of
//! the maps are ignored, and so are unknown names in an offer. An offer or
//! choice that is malformed, too long, names no known cipher, or a choice
//! that was not offered, fails the handshake ([`SecureError::Handshake`]).
//! Older peers: a client that sends an empty first payload offers
//! ChaChaPoly only, and the server then answers with an empty payload (as
//! older servers do, and as older clients expect); a client that gets an
//! empty second payload uses ChaChaPoly.
//!
//! After that, each WebSocket binary message is one sealed frame: the
//! plaintext frame (MessagePack) cut into pieces of at most [`MAX_PIECE`]
//! bytes, each encrypted with the next nonce of its direction and written as
//! a 2-byte big-endian length followed by the ciphertext of one flag byte (1
//! on the frame's last piece, 0 before) and the piece, plus the 16-byte tag.
//! The flag is encrypted and authenticated, so a frame cannot be cut short or
//! two frames glued together without the receiver noticing. The AEAD is
//! Noise's cipher of that name, done here with aws-lc-rs: the key is the 32-byte
//! `Split()` key of the direction, the associated data is empty, and the
//! 96-bit nonce is 4 zero bytes then the piece's counter (0, 1, 2, ... per
//! direction) as a **little-endian** `u64` for ChaChaPoly and a
//! **big-endian** `u64` for AESGCM.
//!
//! With AESGCM only, each direction's key is replaced every
//! [`REKEY_INTERVAL`] pieces, by both ends and with nothing on the wire: the
//! piece with counter `n` is sealed with the key obtained from the `Split()`
//! key by `n / REKEY_INTERVAL` applications of Noise's `Rekey()` (the new
//! key is the first 32 bytes of the encryption of 32 zero bytes under the
//! old key, with the nonce of counter 2^64 − 1 and empty associated data).
//! The counter runs on across a rekey, as in Noise. ChaChaPoly is never
//! rekeyed: older peers do not do it, and ChaCha20-Poly1305 has no per-key
//! limit that these volumes come near (see [`REKEY_INTERVAL`]).
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
//! [`PLAINTEXT_MARKER`] as their payload, no cipher is negotiated (the
//! client's first payload is empty, the server ignores it, the offer lists
//! given to [`Initiator::start_with`] and [`Responder::respond_with`] are
//! ignored and the channel reports `TransportCipher::InsecurePlaintext`, a
//! variant that only this build has).
//! After it, [`Sealer::seal`] and
//! [`Opener::open`] keep the same framing (length prefix, flag byte, piece,
//! a 16-byte slot where the tag goes) and the same code path, but copy the
//! piece in the clear and fill the tag slot with `PLAINTXT` and the piece's
//! counter (little-endian `u64`), so that order and replays are still
//! checked (not tampering). A build with the feature and a build without it
//! refuse each other during the handshake, each with an error naming the
//! feature.

use std::fmt;
use std::marker::PhantomData;
use std::num::NonZeroU64;

use aws_lc_rs::aead::{AES_256_GCM, Aad, CHACHA20_POLY1305, LessSafeKey, Nonce, UnboundKey};
use base64::Engine as _;
use bytes::{Bytes, BytesMut};
use serde::de::{self, Deserialize, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
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
/// Pieces sealed under one AES-256-GCM key, per direction, before both ends
/// replace it with Noise's `Rekey()` (see the [module documentation](self));
/// ChaCha20-Poly1305 keys are never replaced.
///
/// Why 2^20: AES-GCM's security under one key degrades with the number of
/// 16-byte blocks it encrypts. The analysis behind TLS 1.3's limit (RFC 8446
/// §5.5, and draft-irtf-cfrg-aead-limits, whose confidentiality bound is
/// about `(blocks + messages)^2 / 2^129`) allows about 2^34.5 blocks
/// (2^38.5 bytes, some 400 GB) for an advantage of 2^-57. A piece is at most
/// 65535 bytes on the wire, so a key encrypts at most 2^20 × 2^16 bytes =
/// 64 GiB = 2^32 blocks (and 2^20 messages): `(2^32 + 2^20)^2 / 2^129` is
/// about 2^-65, 2^8 times under that margin (summed over keys, still under
/// 2^-57 after 2^8 keys, 16 TiB per direction). At about 1 GB/s that is a
/// new key every minute or so, for the cost of one 32-byte AES-GCM
/// encryption and a key schedule; a smaller interval would buy nothing
/// measurable.
///
/// ChaCha20-Poly1305 has no comparable per-key limit at these volumes: RFC
/// 8446 §5.5 notes that a 64-bit record counter wraps before its safety
/// limit is reached (and RFC 9001 §6.6 puts its confidentiality limit beyond
/// 2^62 packets); its integrity limit counts forgery attempts, and here the
/// first piece that fails to open ends the session. Older peers, which know
/// only ChaCha20-Poly1305, do not rekey either.
pub const REKEY_INTERVAL: u64 = 1 << 20;
// A key's share of the traffic stays at 64 GiB or less.
const _: () = assert!(REKEY_INTERVAL * (MAX_PIECE + 1 + TAG_LEN) as u64 <= 1 << 36);
/// Longest sealed WebSocket message: a [`MAX_FRAME_LEN`] frame with the
/// length prefix and tag of each piece.
pub const MAX_SEALED_LEN: usize =
    MAX_FRAME_LEN + (MAX_FRAME_LEN / MAX_PIECE + 1) * (2 + 1 + TAG_LEN);
/// Longest handshake message accepted.
pub const MAX_HANDSHAKE_LEN: usize = 1024;
/// Longest cipher offer (payload of the first handshake message) or choice
/// (payload of the second) accepted; see the [module documentation](self).
pub const MAX_NEGOTIATION_LEN: usize = 256;
/// Deepest nesting of MessagePack arrays and maps in an offer or choice, the
/// outer map included (unknown entries are skipped, whatever they hold,
/// within this depth).
const NEGOTIATION_DEPTH: usize = 8;

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

/// The AEAD that seals frames after the handshake, negotiated during it
/// (see the [module documentation](self)). Displayed as its Noise name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum TransportCipher {
    /// AES-256-GCM, Noise's `AESGCM` (nonce: 4 zero bytes, then the counter
    /// as a big-endian `u64`). Preferred when both ends have AES hardware.
    Aes256Gcm,
    /// ChaCha20-Poly1305, Noise's `ChaChaPoly` (nonce: 4 zero bytes, then
    /// the counter as a little-endian `u64`). Every peer supports it.
    ChaCha20Poly1305,
    /// INSECURE, benchmarks only: the `insecure-plaintext-bench` build, which
    /// negotiates nothing and seals nothing.
    #[cfg(feature = "insecure-plaintext-bench")]
    InsecurePlaintext,
}

impl TransportCipher {
    /// Noise's name of the cipher, as written in offers and choices
    /// (`AESGCM`, `ChaChaPoly`).
    pub const fn noise_name(self) -> &'static str {
        match self {
            TransportCipher::Aes256Gcm => "AESGCM",
            TransportCipher::ChaCha20Poly1305 => "ChaChaPoly",
            #[cfg(feature = "insecure-plaintext-bench")]
            TransportCipher::InsecurePlaintext => "PLAINTEXT (insecure-plaintext-bench)",
        }
    }

    /// The cipher of a Noise name that can be negotiated, if known.
    pub fn from_noise_name(name: &str) -> Option<TransportCipher> {
        match name {
            "AESGCM" => Some(TransportCipher::Aes256Gcm),
            "ChaChaPoly" => Some(TransportCipher::ChaCha20Poly1305),
            _ => None,
        }
    }

    /// What this machine offers (as a client) and accepts (as a server), in
    /// order of preference: AES-256-GCM first when the CPU has AES hardware
    /// ([`aes_hardware`]), then ChaCha20-Poly1305, which is always there.
    /// [`Initiator::start`] and [`Responder::respond`] use it.
    pub fn defaults() -> &'static [TransportCipher] {
        if aes_hardware() {
            &[
                TransportCipher::Aes256Gcm,
                TransportCipher::ChaCha20Poly1305,
            ]
        } else {
            &[TransportCipher::ChaCha20Poly1305]
        }
    }
}

impl fmt::Display for TransportCipher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.noise_name())
    }
}

/// Whether this CPU has the instructions that make AES-GCM fast and
/// constant-time: AES and carry-less multiplication (`aes` and `pclmulqdq`
/// on x86-64, `aes` and `pmull` on AArch64). `false` on other architectures.
pub fn aes_hardware() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("aes")
            && std::arch::is_x86_feature_detected!("pclmulqdq")
    }
    #[cfg(target_arch = "aarch64")]
    {
        std::arch::is_aarch64_feature_detected!("aes")
            && std::arch::is_aarch64_feature_detected!("pmull")
    }
    #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
    {
        false
    }
}

/// `ciphers` as `AESGCM, ChaChaPoly`, for error messages.
fn cipher_list(ciphers: &[TransportCipher]) -> String {
    let names: Vec<&str> = ciphers.iter().map(|cipher| cipher.noise_name()).collect();
    names.join(", ")
}

/// `ciphers` without repeats, in order; an error if none is left.
fn cipher_set(
    ciphers: &[TransportCipher],
    whose: &str,
) -> Result<Vec<TransportCipher>, SecureError> {
    let mut set = Vec::with_capacity(ciphers.len());
    for cipher in ciphers {
        if !set.contains(cipher) {
            set.push(*cipher);
        }
    }
    if set.is_empty() {
        return Err(SecureError::Handshake(format!(
            "{whose} lists no transport cipher"
        )));
    }
    Ok(set)
}

/// The client's offer: `{"aead": [names]}`.
#[cfg_attr(
    feature = "insecure-plaintext-bench",
    allow(dead_code, reason = "the plaintext bench build negotiates nothing")
)]
fn encode_offer(ciphers: &[TransportCipher]) -> Result<Vec<u8>, SecureError> {
    #[derive(serde::Serialize)]
    struct Offer<'a> {
        aead: Vec<&'a str>,
    }
    let offer = Offer {
        aead: ciphers.iter().map(|cipher| cipher.noise_name()).collect(),
    };
    let bytes = rmp_serde::to_vec_named(&offer)
        .map_err(|error| SecureError::Handshake(format!("cannot encode the offer: {error}")))?;
    if bytes.len() > MAX_NEGOTIATION_LEN {
        return Err(SecureError::Handshake(
            "the cipher offer is too long".into(),
        ));
    }
    Ok(bytes)
}

/// The server's choice: `{"aead": name}`.
#[cfg_attr(
    feature = "insecure-plaintext-bench",
    allow(dead_code, reason = "the plaintext bench build negotiates nothing")
)]
fn encode_choice(cipher: TransportCipher) -> Result<Vec<u8>, SecureError> {
    #[derive(serde::Serialize)]
    struct Choice {
        aead: &'static str,
    }
    rmp_serde::to_vec_named(&Choice {
        aead: cipher.noise_name(),
    })
    .map_err(|error| SecureError::Handshake(format!("cannot encode the choice: {error}")))
}

/// The known ciphers of a client's offer (a non-empty first payload), in
/// its order; unknown names are skipped.
#[cfg_attr(
    feature = "insecure-plaintext-bench",
    allow(dead_code, reason = "the plaintext bench build negotiates nothing")
)]
fn decode_offer(payload: &[u8]) -> Result<Vec<TransportCipher>, SecureError> {
    let refused = |why: String| SecureError::Handshake(format!("the client's cipher offer {why}"));
    if payload.len() > MAX_NEGOTIATION_LEN {
        return Err(refused(format!(
            "is {} bytes, over the limit of {MAX_NEGOTIATION_LEN}",
            payload.len()
        )));
    }
    let Names(names) =
        read_aead_entry::<Names>(payload).map_err(|why| refused(format!("is malformed: {why}")))?;
    let mut known = Vec::new();
    for cipher in names
        .iter()
        .filter_map(|name| TransportCipher::from_noise_name(name))
    {
        if !known.contains(&cipher) {
            known.push(cipher);
        }
    }
    if known.is_empty() {
        return Err(refused(format!("names no known cipher: {names:?}")));
    }
    Ok(known)
}

/// The server's choice (a non-empty second payload); it must be one of
/// `offered`.
#[cfg_attr(
    feature = "insecure-plaintext-bench",
    allow(dead_code, reason = "the plaintext bench build negotiates nothing")
)]
fn decode_choice(
    payload: &[u8],
    offered: &[TransportCipher],
) -> Result<TransportCipher, SecureError> {
    let refused = |why: String| SecureError::Handshake(format!("the server's cipher choice {why}"));
    if payload.len() > MAX_NEGOTIATION_LEN {
        return Err(refused(format!(
            "is {} bytes, over the limit of {MAX_NEGOTIATION_LEN}",
            payload.len()
        )));
    }
    let name = read_aead_entry::<String>(payload)
        .map_err(|why| refused(format!("is malformed: {why}")))?;
    let cipher = TransportCipher::from_noise_name(&name)
        .ok_or_else(|| refused(format!("names an unknown cipher, {name:?}")))?;
    if !offered.contains(&cipher) {
        return Err(refused(format!(
            "is {cipher}, which this client did not offer (it offered {})",
            cipher_list(offered)
        )));
    }
    Ok(cipher)
}

/// The cipher an empty payload stands for, in an older peer's handshake:
/// ChaChaPoly, if `ours` (what this side offers or accepts) has it.
#[cfg_attr(
    feature = "insecure-plaintext-bench",
    allow(dead_code, reason = "the plaintext bench build negotiates nothing")
)]
fn legacy_cipher(ours: &[TransportCipher], peer: &str) -> Result<TransportCipher, SecureError> {
    if ours.contains(&TransportCipher::ChaCha20Poly1305) {
        Ok(TransportCipher::ChaCha20Poly1305)
    } else {
        Err(SecureError::Handshake(format!(
            "the {peer} negotiates no cipher (an older version: ChaChaPoly only), and this side \
             allows only {}",
            cipher_list(ours)
        )))
    }
}

/// Reads the `aead` entry of a MessagePack map that must make up the whole
/// of `payload` (string keys, other entries skipped, no trailing bytes).
fn read_aead_entry<T: de::DeserializeOwned>(payload: &[u8]) -> Result<T, String> {
    let mut decoder = rmp_serde::Deserializer::new(std::io::Cursor::new(payload));
    // rmp-serde refuses a value nested as deep as its limit.
    decoder.set_max_depth(NEGOTIATION_DEPTH + 1);
    let AeadEntry(value) =
        AeadEntry::<T>::deserialize(&mut decoder).map_err(|error| error.to_string())?;
    let read = usize::try_from(decoder.position()).unwrap_or(usize::MAX);
    match payload.len().checked_sub(read) {
        Some(0) => Ok(value),
        Some(trailing) => Err(format!("{trailing} trailing bytes")),
        None => Err("read past the end".into()),
    }
}

/// The `aead` entry of an offer or choice map.
struct AeadEntry<T>(T);

impl<'de, T: Deserialize<'de>> Deserialize<'de> for AeadEntry<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct EntryVisitor<T>(PhantomData<T>);

        impl<'de, T: Deserialize<'de>> Visitor<'de> for EntryVisitor<T> {
            type Value = AeadEntry<T>;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a map with an `aead` entry")
            }

            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut aead = None;
                while let Some(key) = map.next_key::<String>()? {
                    if key != "aead" {
                        map.next_value::<IgnoredAny>()?;
                    } else if aead.is_some() {
                        return Err(de::Error::duplicate_field("aead"));
                    } else {
                        aead = Some(map.next_value::<T>()?);
                    }
                }
                aead.map(AeadEntry)
                    .ok_or_else(|| de::Error::missing_field("aead"))
            }
        }

        deserializer.deserialize_map(EntryVisitor(PhantomData))
    }
}

/// The names of an offer: an array of strings (read without reserving room
/// for the length it announces).
struct Names(Vec<String>);

impl<'de> Deserialize<'de> for Names {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct NamesVisitor;

        impl<'de> Visitor<'de> for NamesVisitor {
            type Value = Names;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an array of cipher names")
            }

            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                let mut names = Vec::new();
                while let Some(name) = seq.next_element::<String>()? {
                    names.push(name);
                }
                Ok(Names(names))
            }
        }

        deserializer.deserialize_seq(NamesVisitor)
    }
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
    /// The ciphers offered (empty in the plaintext bench build).
    offered: Vec<TransportCipher>,
    /// The server's choice, once its answer is read.
    cipher: Option<TransportCipher>,
}

impl fmt::Debug for Initiator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Initiator")
            .field("offered", &self.offered)
            .field("cipher", &self.cipher)
            .finish_non_exhaustive()
    }
}

impl Initiator {
    /// Starts the handshake with the device key, offering this machine's
    /// [`TransportCipher::defaults`]; returns the first message.
    pub fn start(device: &StaticKey) -> Result<(Initiator, Vec<u8>), SecureError> {
        Initiator::start_with(device, TransportCipher::defaults())
    }

    /// [`start`](Initiator::start), offering exactly `offer` (at least one
    /// cipher; repeats are dropped). The plaintext bench build ignores it.
    pub fn start_with(
        device: &StaticKey,
        offer: &[TransportCipher],
    ) -> Result<(Initiator, Vec<u8>), SecureError> {
        let (offered, payload) = if ENCRYPTED {
            let offered = cipher_set(offer, "the client's offer")?;
            let payload = encode_offer(&offered)?;
            (offered, payload)
        } else {
            (Vec::new(), Vec::new())
        };
        let mut state = Builder::new(params())
            .local_private_key(&device.private)
            .and_then(|builder| builder.prologue(SUBPROTOCOL.as_bytes()))
            .and_then(Builder::build_initiator)
            .map_err(handshake_error)?;
        let mut message = vec![0u8; MAX_HANDSHAKE_LEN];
        let len = state
            .write_message(&payload, &mut message)
            .map_err(handshake_error)?;
        message.truncate(len);
        Ok((
            Initiator {
                state,
                offered,
                cipher: None,
            },
            message,
        ))
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
        let payload = &payload[..len];
        check_peer_build(payload, "server")?;
        let cipher = self.chosen(payload)?;
        let key = self
            .state
            .get_remote_static()
            .map(<[u8]>::to_vec)
            .ok_or_else(|| SecureError::Handshake("the server sent no static key".into()))?;
        check_public_key(&key)?;
        self.cipher = Some(cipher);
        Ok(key)
    }

    /// The cipher the server's second payload stands for.
    #[cfg(not(feature = "insecure-plaintext-bench"))]
    fn chosen(&self, payload: &[u8]) -> Result<TransportCipher, SecureError> {
        if payload.is_empty() {
            legacy_cipher(&self.offered, "server")
        } else {
            decode_choice(payload, &self.offered)
        }
    }

    /// The plaintext bench build negotiates nothing.
    #[cfg(feature = "insecure-plaintext-bench")]
    fn chosen(&self, _payload: &[u8]) -> Result<TransportCipher, SecureError> {
        Ok(TransportCipher::InsecurePlaintext)
    }

    /// The cipher the server chose, once its answer has been read.
    pub fn cipher(&self) -> Option<TransportCipher> {
        self.cipher
    }

    /// Writes the last handshake message and opens the channel.
    pub fn finish(mut self) -> Result<(Vec<u8>, Channel), SecureError> {
        let mut message = vec![0u8; MAX_HANDSHAKE_LEN];
        let len = self
            .state
            .write_message(HANDSHAKE_PAYLOAD, &mut message)
            .map_err(handshake_error)?;
        message.truncate(len);
        let cipher = self
            .cipher
            .ok_or_else(|| SecureError::Handshake("the server's answer was not read".into()))?;
        Ok((message, Channel::open(self.state, cipher)?))
    }
}

/// The server's side of the handshake.
pub struct Responder {
    state: HandshakeState,
    /// The cipher chosen for the channel.
    cipher: TransportCipher,
}

impl fmt::Debug for Responder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Responder")
            .field("cipher", &self.cipher)
            .finish_non_exhaustive()
    }
}

impl Responder {
    /// Reads the client's first message with the server key; returns the
    /// answer to send. Accepts this machine's [`TransportCipher::defaults`].
    pub fn respond(server: &StaticKey, first: &[u8]) -> Result<(Responder, Vec<u8>), SecureError> {
        Responder::respond_with(server, first, TransportCipher::defaults())
    }

    /// [`respond`](Responder::respond), accepting only the ciphers of
    /// `accept` (at least one), in order of preference: the channel uses the
    /// first of them that the client offered. The plaintext bench build
    /// ignores it.
    pub fn respond_with(
        server: &StaticKey,
        first: &[u8],
        accept: &[TransportCipher],
    ) -> Result<(Responder, Vec<u8>), SecureError> {
        if first.len() > MAX_HANDSHAKE_LEN {
            return Err(SecureError::Handshake("handshake message too long".into()));
        }
        let accept = if ENCRYPTED {
            cipher_set(accept, "the server's list")?
        } else {
            Vec::new()
        };
        let mut state = Builder::new(params())
            .local_private_key(&server.private)
            .and_then(|builder| builder.prologue(SUBPROTOCOL.as_bytes()))
            .and_then(Builder::build_responder)
            .map_err(handshake_error)?;
        let mut payload = vec![0u8; MAX_HANDSHAKE_LEN];
        let len = state
            .read_message(first, &mut payload)
            .map_err(handshake_error)?;
        let (cipher, answer) = choose(&payload[..len], &accept)?;
        let mut message = vec![0u8; MAX_HANDSHAKE_LEN];
        let len = state
            .write_message(&answer, &mut message)
            .map_err(handshake_error)?;
        message.truncate(len);
        Ok((Responder { state, cipher }, message))
    }

    /// The cipher chosen for the channel.
    pub fn cipher(&self) -> TransportCipher {
        self.cipher
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
        if ENCRYPTED && len > 0 {
            return Err(SecureError::Handshake(
                "the client's last handshake message carries a payload (it must be empty)".into(),
            ));
        }
        let device = self
            .state
            .get_remote_static()
            .map(<[u8]>::to_vec)
            .ok_or_else(|| SecureError::Handshake("the client sent no device key".into()))?;
        check_public_key(&device)?;
        Ok((device, Channel::open(self.state, self.cipher)?))
    }
}

/// The server's choice for the client's first payload `offer`, among
/// `accept`, and the payload of its answer: empty for an empty offer (an
/// older client, which expects an empty answer), else the encoded choice.
#[cfg(not(feature = "insecure-plaintext-bench"))]
fn choose(
    offer: &[u8],
    accept: &[TransportCipher],
) -> Result<(TransportCipher, Vec<u8>), SecureError> {
    if offer.is_empty() {
        return Ok((legacy_cipher(accept, "client")?, Vec::new()));
    }
    let offered = decode_offer(offer)?;
    let cipher = accept
        .iter()
        .copied()
        .find(|cipher| offered.contains(cipher))
        .ok_or_else(|| {
            SecureError::Handshake(format!(
                "no transport cipher in common: the client offers {}, this server accepts {}",
                cipher_list(&offered),
                cipher_list(accept)
            ))
        })?;
    Ok((cipher, encode_choice(cipher)?))
}

/// The plaintext bench build ignores the offer and answers with the marker.
#[cfg(feature = "insecure-plaintext-bench")]
fn choose(
    _offer: &[u8],
    _accept: &[TransportCipher],
) -> Result<(TransportCipher, Vec<u8>), SecureError> {
    Ok((
        TransportCipher::InsecurePlaintext,
        PLAINTEXT_MARKER.to_vec(),
    ))
}

/// Both directions of an open channel; split it to seal and open
/// concurrently.
#[derive(Debug)]
pub struct Channel {
    sealer: Sealer,
    opener: Opener,
}

impl Channel {
    fn open(mut state: HandshakeState, cipher: TransportCipher) -> Result<Channel, SecureError> {
        if !state.is_handshake_finished() {
            return Err(SecureError::Handshake(
                "the handshake is not finished".into(),
            ));
        }
        // Noise's Split(): the initiator sends with the first key. The
        // transport is Noise's cipher `cipher` done here with aws-lc-rs rather
        // than snow's, so that a piece is encrypted and decrypted where it
        // lies in the message instead of through scratch buffers (same bytes
        // on the wire: 96-bit nonce of 4 zero bytes and the counter, little-
        // endian for ChaChaPoly and big-endian for AESGCM, empty associated
        // data). AESGCM keys are rekeyed every `REKEY_INTERVAL` pieces.
        let (first, second) = state.dangerously_get_raw_split();
        let (send, receive) = if state.is_initiator() {
            (first, second)
        } else {
            (second, first)
        };
        Ok(Channel {
            sealer: Sealer {
                key: Transport::new(cipher, &send, REKEY_INTERVAL)?,
                nonce: 0,
                spare: None,
            },
            opener: Opener {
                key: Transport::new(cipher, &receive, REKEY_INTERVAL)?,
                nonce: 0,
            },
        })
    }

    /// The channel rekeying AES-256-GCM every `interval` pieces instead of
    /// every [`REKEY_INTERVAL`], so that tests reach a rekey; only before
    /// anything is sealed or opened.
    #[cfg(test)]
    fn with_rekey_interval(mut self, interval: u64) -> Channel {
        assert_eq!((self.sealer.nonce, self.opener.nonce), (0, 0));
        for key in [&mut self.sealer.key, &mut self.opener.key] {
            key.rekey_interval = rekey_interval(key.cipher, interval);
        }
        self
    }

    /// The AEAD that seals the frames, as negotiated in the handshake.
    pub fn cipher(&self) -> TransportCipher {
        self.sealer.cipher()
    }

    /// The sending and receiving halves.
    pub fn split(self) -> (Sealer, Opener) {
        (self.sealer, self.opener)
    }
}

/// One direction's AEAD key (made from the split key in both builds, a
/// ChaCha20-Poly1305 one in the `insecure-plaintext-bench` build, which does
/// not use it).
struct Transport {
    #[cfg_attr(
        feature = "insecure-plaintext-bench",
        allow(dead_code, reason = "the plaintext bench build seals nothing")
    )]
    key: LessSafeKey,
    cipher: TransportCipher,
    /// Pieces per key: `Some` for AES-256-GCM only (see [`rekey_interval`]).
    rekey_interval: Option<NonZeroU64>,
    /// How many times Noise's `Rekey()` led from the split key to this one.
    rekeys: u64,
}

/// The rekey interval of a `cipher` key: `interval` pieces for AES-256-GCM
/// (never 0), none for the others.
fn rekey_interval(cipher: TransportCipher, interval: u64) -> Option<NonZeroU64> {
    match cipher {
        TransportCipher::Aes256Gcm => Some(NonZeroU64::new(interval).unwrap_or(NonZeroU64::MIN)),
        _ => None,
    }
}

impl Transport {
    /// The split key `key` of `cipher`, replaced every `interval` pieces if
    /// the cipher is AES-256-GCM.
    fn new(
        cipher: TransportCipher,
        key: &[u8; 32],
        interval: u64,
    ) -> Result<Transport, SecureError> {
        let algorithm = match cipher {
            TransportCipher::Aes256Gcm => &AES_256_GCM,
            TransportCipher::ChaCha20Poly1305 => &CHACHA20_POLY1305,
            #[cfg(feature = "insecure-plaintext-bench")]
            TransportCipher::InsecurePlaintext => &CHACHA20_POLY1305,
        };
        UnboundKey::new(algorithm, key)
            .map(|key| Transport {
                key: LessSafeKey::new(key),
                cipher,
                rekey_interval: rekey_interval(cipher, interval),
                rekeys: 0,
            })
            .map_err(|_| SecureError::Handshake("unusable transport key".into()))
    }

    /// Noise's `Rekey()`: the next key, the first 32 bytes of the encryption
    /// of 32 zero bytes under this one with the nonce of counter 2^64 − 1
    /// (which no piece uses) and empty associated data; the tag is dropped.
    fn rekeyed(&self) -> Result<Transport, SecureError> {
        let mut next = [0u8; 32];
        let _tag = self
            .key
            .seal_in_place_separate_tag(
                Nonce::assume_unique_for_key(nonce_bytes(self.cipher, u64::MAX)),
                Aad::empty(),
                &mut next,
            )
            .map_err(|_| SecureError::Tampered)?;
        let interval = self.rekey_interval.map_or(REKEY_INTERVAL, NonZeroU64::get);
        let mut transport = Transport::new(self.cipher, &next, interval)?;
        transport.rekeys = self.rekeys + 1;
        Ok(transport)
    }

    /// The key for the piece of counter `n`: the one after `n / interval`
    /// rekeys. That is this key, or one derived from it into `pending` (or
    /// from the one already there), so that the caller decides whether the
    /// channel moves on to it.
    #[inline]
    fn for_piece<'a>(
        &'a self,
        n: u64,
        pending: &'a mut Option<Transport>,
    ) -> Result<&'a Transport, SecureError> {
        let due = self.rekey_interval.map_or(0, |interval| n / interval);
        loop {
            let current = pending.as_ref().unwrap_or(self);
            if current.rekeys >= due {
                break;
            }
            let next = current.rekeyed()?;
            *pending = Some(next);
        }
        Ok(pending.as_ref().unwrap_or(self))
    }

    /// Seals with counter `n` a piece: `piece` holds its flag byte, then
    /// room for `part` and the tag, and gets the ciphertext of the flag and
    /// `part`, then the tag.
    ///
    /// AES-GCM reads `part` where it lies (aws-lc's scatter seal), with no
    /// copy first. aws-lc's ChaCha20-Poly1305 encrypts a scatter seal's
    /// extra input one 64-byte block per call (0.43 against 1.92 GB/s for a
    /// copy then a seal in place, measured here), so `part` is copied in
    /// first for it.
    #[cfg(not(feature = "insecure-plaintext-bench"))]
    #[inline]
    fn seal(&self, n: u64, piece: &mut [u8], part: &[u8]) -> Result<(), SecureError> {
        let nonce = noise_nonce(self.cipher, n)?;
        let sealed_len = 1 + part.len();
        if piece.len() != sealed_len + TAG_LEN {
            return Err(SecureError::TooLarge { len: piece.len() });
        }
        if self.cipher == TransportCipher::Aes256Gcm {
            let (flag, out) = piece.split_at_mut(1);
            return self
                .key
                .seal_in_place_scatter(nonce, Aad::empty(), flag, part, out)
                .map_err(|_| SecureError::Tampered);
        }
        let (in_out, tag_slot) = piece.split_at_mut(sealed_len);
        in_out[1..].copy_from_slice(part);
        let tag = self
            .key
            .seal_in_place_separate_tag(nonce, Aad::empty(), in_out)
            .map_err(|_| SecureError::Tampered)?;
        tag_slot.copy_from_slice(tag.as_ref());
        Ok(())
    }

    /// Decrypts `in_out` (ciphertext, then tag) in place with counter `n`;
    /// returns the plaintext part.
    #[cfg(not(feature = "insecure-plaintext-bench"))]
    #[inline]
    fn open<'a>(&self, n: u64, in_out: &'a mut [u8]) -> Result<&'a mut [u8], SecureError> {
        self.key
            .open_in_place(noise_nonce(self.cipher, n)?, Aad::empty(), in_out)
            .map_err(|_| SecureError::Tampered)
    }

    /// INSECURE, benchmarks only: leaves the flag and `part` (copied into
    /// `piece` after it) in the clear; the "tag" is [`PLAINTEXT_TAG`] and the
    /// counter.
    #[cfg(feature = "insecure-plaintext-bench")]
    #[inline]
    fn seal(&self, n: u64, piece: &mut [u8], part: &[u8]) -> Result<(), SecureError> {
        noise_nonce(self.cipher, n)?;
        if piece.len() != 1 + part.len() + TAG_LEN {
            return Err(SecureError::TooLarge { len: piece.len() });
        }
        let (clear, tag) = piece[1..].split_at_mut(part.len());
        clear.copy_from_slice(part);
        tag.copy_from_slice(&plaintext_tag(n));
        Ok(())
    }

    /// INSECURE, benchmarks only: checks the tag slot holds
    /// [`PLAINTEXT_TAG`] and counter `n` (so a sealed frame, a replay or a
    /// piece out of order is refused); returns the part in the clear before it.
    #[cfg(feature = "insecure-plaintext-bench")]
    #[inline]
    fn open<'a>(&self, n: u64, in_out: &'a mut [u8]) -> Result<&'a mut [u8], SecureError> {
        noise_nonce(self.cipher, n)?;
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
        write!(f, "Transport({})", self.cipher)
    }
}

/// Noise's nonce of `cipher` for counter `n`: 4 zero bytes, then the counter
/// as a big-endian `u64` for AESGCM and a little-endian one for ChaChaPoly.
/// The last counter value is reserved by Noise, so a channel that reaches
/// it refuses to go on.
fn noise_nonce(cipher: TransportCipher, n: u64) -> Result<Nonce, SecureError> {
    if n == u64::MAX {
        return Err(SecureError::Tampered);
    }
    Ok(Nonce::assume_unique_for_key(nonce_bytes(cipher, n)))
}

/// The bytes of Noise's nonce of `cipher` for counter `n` (see
/// [`noise_nonce`]; `Rekey()` uses the reserved last one).
fn nonce_bytes(cipher: TransportCipher, n: u64) -> [u8; 12] {
    let counter = match cipher {
        TransportCipher::Aes256Gcm => n.to_be_bytes(),
        TransportCipher::ChaCha20Poly1305 => n.to_le_bytes(),
        #[cfg(feature = "insecure-plaintext-bench")]
        TransportCipher::InsecurePlaintext => n.to_le_bytes(),
    };
    let mut nonce = [0u8; 12];
    nonce[4..].copy_from_slice(&counter);
    nonce
}

/// How far into its allocation [`Sealer::seal_message`] starts a message.
///
/// A WebSocket library copies each message behind its frame header (2 to 14
/// bytes) into its write buffer, and on AMD Zen processors glibc's `memcpy`
/// is about fifteen times slower when the destination's offset in its page
/// is 1 to 15 bytes past the source's (see [`crate::copy`]). When the
/// message and the write buffer start at the same offset in a page, as the
/// benchmark's allocator placed them, every header lands there; starting the
/// message this far in puts the source past the destination instead. A
/// heuristic: buffers at other offsets are as likely to hit the slow case
/// as before (15 offsets in 4096).
pub const MESSAGE_LEAD: usize = 32;

/// Seals outgoing frames.
#[derive(Debug)]
pub struct Sealer {
    key: Transport,
    nonce: u64,
    /// The allocation of the last big message [`seal_message`] made, to seal
    /// the next one into once the socket has let go of it (it copies each
    /// message into its own buffer as it takes it). Already written, it needs
    /// no zeroing: a stream's pieces are sealed straight from the frame into
    /// it, with no copy and no fresh memory (`bench/PROFILE.md`).
    ///
    /// [`seal_message`]: Sealer::seal_message
    spare: Option<Bytes>,
}

/// The smallest frame whose sealed message's allocation [`Sealer`] keeps for
/// the next: a stream's output chunks (64 KiB), not answers and prompts, so
/// that a quiet session holds no buffer for them.
const SPARE_MIN: usize = 16 * 1024;

/// The largest allocation [`Sealer`] keeps for the next message: an output
/// chunk's, not a file chunk's (512 KiB), so that a session quiet after a
/// transfer holds at most about as much as its WebSocket's write buffer.
const SPARE_MAX: usize = 96 * 1024;

impl Sealer {
    /// The AEAD that seals the frames.
    pub fn cipher(&self) -> TransportCipher {
        self.key.cipher
    }

    /// Seals one plaintext frame into one WebSocket message. A socket sends
    /// [`seal_message`](Sealer::seal_message)'s instead.
    pub fn seal(&mut self, frame: &[u8]) -> Result<Vec<u8>, SecureError> {
        let mut out = vec![0; checked_sealed_len(frame)?];
        self.seal_into(frame, &mut out)?;
        Ok(out)
    }

    /// [`seal`](Sealer::seal), into bytes that start [`MESSAGE_LEAD`] bytes
    /// into their allocation: a WebSocket library that copies the message
    /// behind its frame header then copies it at full speed (see
    /// [`MESSAGE_LEAD`]).
    pub fn seal_message(&mut self, frame: &[u8]) -> Result<Bytes, SecureError> {
        let len = MESSAGE_LEAD + checked_sealed_len(frame)?;
        // The last big message's allocation once nothing else holds it.
        let mut out = match self.spare.take().map(Bytes::try_into_mut) {
            Some(Ok(mut spare)) if spare.capacity() >= len => {
                spare.resize(len, 0);
                spare
            }
            _ => BytesMut::zeroed(len),
        };
        self.seal_into(frame, &mut out[MESSAGE_LEAD..])?;
        let out = out.freeze();
        if frame.len() >= SPARE_MIN && out.len() <= SPARE_MAX {
            self.spare = Some(out.clone());
        }
        Ok(out.slice(MESSAGE_LEAD..))
    }

    /// Writes the sealed message of `frame` into `out`, exactly
    /// [`checked_sealed_len`] bytes; on error, `out` may hold part of it.
    fn seal_into(&mut self, frame: &[u8], out: &mut [u8]) -> Result<(), SecureError> {
        let mut chunks: Vec<&[u8]> = frame.chunks(MAX_PIECE).collect();
        if chunks.is_empty() {
            chunks.push(&[]);
        }
        let last_index = chunks.len() - 1;
        let mut nonce = self.nonce;
        // The key after a rekey within this frame, if any.
        let mut rekeyed = None;
        let mut rest = out;
        for (index, chunk) in chunks.into_iter().enumerate() {
            let len = 1 + chunk.len() + TAG_LEN;
            let prefix = u16::try_from(len).map_err(|_| SecureError::TooLarge { len })?;
            let (piece, after) = rest
                .split_at_mut_checked(2 + len)
                .ok_or(SecureError::TooLarge { len })?;
            let (prefix_bytes, piece) = piece.split_at_mut(2);
            prefix_bytes.copy_from_slice(&prefix.to_be_bytes());
            piece[0] = if index == last_index { LAST } else { MORE };
            let key = self.key.for_piece(nonce, &mut rekeyed)?;
            key.seal(nonce, piece, chunk)?;
            rest = after;
            nonce += 1;
        }
        // Only a frame sealed whole moves the channel on.
        if let Some(key) = rekeyed {
            self.key = key;
        }
        self.nonce = nonce;
        Ok(())
    }
}

/// The length of the sealed message of `frame`; a frame over
/// [`MAX_FRAME_LEN`] is refused before anything is made for it.
fn checked_sealed_len(frame: &[u8]) -> Result<usize, SecureError> {
    if frame.len() > MAX_FRAME_LEN {
        return Err(SecureError::TooLarge { len: frame.len() });
    }
    Ok(sealed_len(frame.len()))
}

/// The length of the sealed message of a frame of `frame_len` bytes.
fn sealed_len(frame_len: usize) -> usize {
    let pieces = frame_len.div_ceil(MAX_PIECE).max(1);
    frame_len + pieces * (2 + 1 + TAG_LEN)
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
    /// The AEAD that seals the frames.
    pub fn cipher(&self) -> TransportCipher {
        self.key.cipher
    }

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
        if message.len() > MAX_SEALED_LEN {
            return Err(SecureError::TooLarge { len: message.len() });
        }
        let mut buffer = Vec::with_capacity(message.len());
        // The spare byte the first piece's flag lands on.
        buffer.push(0);
        let mut nonce = self.nonce;
        // The key after a rekey within this message, if any: the channel
        // moves on to it only if the whole message opens.
        let mut rekeyed = None;
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
            crate::copy::extend_from_slice(&mut buffer, piece);
            let key = self.key.for_piece(nonce, &mut rekeyed)?;
            let opened = key.open(nonce, &mut buffer[at..])?;
            let flag = opened.first().copied().ok_or(SecureError::Tampered)?;
            nonce += 1;
            ended = match flag {
                LAST => true,
                // A frame is cut one way only: full pieces before its last
                // (empty ones would make a message of any length).
                MORE if part_len == MAX_PIECE => false,
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
        if let Some(key) = rekeyed {
            self.key = key;
        }
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

/// Refuses a peer's static key of small order (libsodium's list of the seven X25519
/// public keys with which every Diffie-Hellman result is the same).
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
        use aws_lc_rs::agreement::{
            EphemeralPrivateKey, UnparsedPublicKey, X25519, agree_ephemeral,
        };
        let rng = aws_lc_rs::rand::SystemRandom::new();
        for bad in SMALL_ORDER_KEYS {
            // Each listed key really is of small order: aws-lc's X25519
            // refuses the all-zero result it gives.
            let private = EphemeralPrivateKey::generate(&X25519, &rng).unwrap();
            let agreed =
                agree_ephemeral(
                    private,
                    UnparsedPublicKey::new(&X25519, bad),
                    (),
                    |_| Ok(()),
                );
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

    const AES: TransportCipher = TransportCipher::Aes256Gcm;
    const CHACHA: TransportCipher = TransportCipher::ChaCha20Poly1305;

    /// A full handshake: the client offers `offer`, the server accepts
    /// `accept`; both sides must agree on the cipher.
    fn channels(offer: &[TransportCipher], accept: &[TransportCipher]) -> (Channel, Channel) {
        let device = StaticKey::generate().unwrap();
        let server = StaticKey::generate().unwrap();
        let (mut initiator, first) = Initiator::start_with(&device, offer).unwrap();
        let (responder, second) = Responder::respond_with(&server, &first, accept).unwrap();
        let server_seen = initiator.read_response(&second).unwrap();
        assert_eq!(initiator.cipher(), Some(responder.cipher()));
        let (third, client) = initiator.finish().unwrap();
        let (device_seen, server_channel) = responder.finish(&third).unwrap();
        assert_eq!(server_seen, server.public());
        assert_eq!(device_seen, device.public());
        assert_eq!(client.cipher(), server_channel.cipher());
        (client, server_channel)
    }

    /// [`channels`] with both sides forced to `ciphers`.
    fn pair_of(ciphers: &[TransportCipher]) -> (Halves, Halves) {
        let (client, server) = channels(ciphers, ciphers);
        (client.split(), server.split())
    }

    /// A channel with this machine's defaults.
    fn pair() -> (Halves, Halves) {
        pair_of(TransportCipher::defaults())
    }

    /// Each cipher to run the channel tests with, forced on both sides (the
    /// bench build negotiates nothing: its defaults).
    fn each_cipher() -> Vec<Vec<TransportCipher>> {
        if ENCRYPTED {
            vec![vec![AES], vec![CHACHA]]
        } else {
            vec![TransportCipher::defaults().to_vec()]
        }
    }

    #[test]
    fn frames_round_trip_both_ways_including_large_ones() {
        for ciphers in each_cipher() {
            let ((mut client_seal, mut client_open), (mut server_seal, mut server_open)) =
                pair_of(&ciphers);
            if ENCRYPTED {
                assert_eq!(client_seal.cipher(), ciphers[0]);
                assert_eq!(server_open.cipher(), ciphers[0]);
            }
            for size in [
                0usize,
                1,
                MAX_PIECE - 1,
                MAX_PIECE,
                MAX_PIECE + 1,
                2 * MAX_PIECE + 7,
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
                assert_eq!(
                    server_open.open(&sealed).unwrap(),
                    frame,
                    "{ciphers:?} {size}"
                );
                let sealed = server_seal.seal(&frame).unwrap();
                assert_eq!(
                    client_open.open(&sealed).unwrap(),
                    frame,
                    "{ciphers:?} {size}"
                );
            }
        }
    }

    #[test]
    fn messages_sealed_for_the_socket_are_sealed_frames_in_sequence_with_the_others() {
        let ((mut seal, _), (_, mut open)) = pair();
        for size in [0usize, 1, MAX_PIECE + 1, 3 * MAX_PIECE] {
            let frame: Vec<u8> = (0..size).map(|i| (i % 253) as u8).collect();
            let message = seal.seal_message(&frame).unwrap();
            assert_eq!(message.len(), sealed_len(size));
            assert_eq!(open.open(&message).unwrap(), frame, "{size}");
            // The plain kind still follows: both moved the same nonce.
            let sealed = seal.seal(&frame).unwrap();
            assert_eq!(sealed.len(), message.len());
            // Sized exactly: no reallocation while sealing.
            assert_eq!(sealed.capacity(), sealed.len());
            assert_eq!(open.open(&sealed).unwrap(), frame, "{size}");
        }
        assert!(matches!(
            seal.seal_message(&vec![0; MAX_FRAME_LEN + 1]),
            Err(SecureError::TooLarge { .. })
        ));
        // The refused frame moved nothing: the next one opens.
        let message = seal.seal_message(b"after").unwrap();
        assert_eq!(open.open(&message).unwrap(), b"after");
    }

    #[test]
    fn a_big_message_is_sealed_into_the_last_ones_allocation_once_it_is_let_go() {
        for ciphers in each_cipher() {
            let ((mut seal, _), (_, mut open)) = pair_of(&ciphers);
            let frame = |size: usize, salt: usize| -> Vec<u8> {
                (0..size).map(|i| ((i + salt) % 241) as u8).collect()
            };
            let (a, b, c) = (
                frame(MAX_PIECE + 9, 1),
                frame(MAX_PIECE, 2),
                frame(SPARE_MIN, 3),
            );
            // Still held (by the socket, say): the next one gets its own
            // allocation, and the held one is left as it was.
            let first = seal.seal_message(&a).unwrap();
            let second = seal.seal_message(&b).unwrap();
            assert_ne!(first.as_ptr(), second.as_ptr());
            assert_eq!(open.open(&first).unwrap(), a, "{ciphers:?}");
            assert_eq!(open.open(&second).unwrap(), b, "{ciphers:?}");
            // Let go: the next, smaller, is sealed where the last one was.
            let at = second.as_ptr();
            drop((first, second));
            let third = seal.seal_message(&c).unwrap();
            assert_eq!(third.as_ptr(), at, "{ciphers:?}");
            assert_eq!(open.open(&third).unwrap(), c, "{ciphers:?}");
            assert!(seal.spare.is_some());
            // A small one may use it, but a quiet session keeps no big buffer.
            drop(third);
            let small = seal.seal_message(b"small").unwrap();
            assert!(seal.spare.is_none(), "{ciphers:?}");
            assert_eq!(open.open(&small).unwrap(), b"small");
            // Nor one bigger than an output chunk (a file chunk's, 512 KiB).
            let big = frame(SPARE_MAX, 4);
            let message = seal.seal_message(&big).unwrap();
            assert!(seal.spare.is_none(), "{ciphers:?}");
            assert_eq!(open.open(&message).unwrap(), big, "{ciphers:?}");
        }
    }

    // The plaintext bench build authenticates nothing: a flipped byte of a
    // piece goes through (see `plaintext` below for what it still checks).
    #[cfg(not(feature = "insecure-plaintext-bench"))]
    #[test]
    fn tampering_replay_and_truncation_are_detected() {
        for ciphers in each_cipher() {
            let ((mut client_seal, _), (_, mut server_open)) = pair_of(&ciphers);
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
    }

    #[test]
    fn frames_cannot_be_cut_short_or_glued_together() {
        for ciphers in each_cipher() {
            let ((mut client_seal, _), (_, mut server_open)) = pair_of(&ciphers);
            let big: Vec<u8> = (0..MAX_PIECE + 10).map(|i| i as u8).collect();
            let sealed = client_seal.seal(&big).unwrap();
            let first_len = 2 + usize::from(u16::from_be_bytes([sealed[0], sealed[1]]));
            assert!(
                server_open.open(&sealed[..first_len]).is_err(),
                "the first piece alone is not a frame"
            );
            let ((mut client_seal, _), (_, mut server_open)) = pair_of(&ciphers);
            let mut glued = client_seal.seal(b"one").unwrap();
            glued.extend(client_seal.seal(b"two").unwrap());
            assert!(
                server_open.open(&glued).is_err(),
                "two frames glued together"
            );
        }
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
        let (mut initiator, first) = Initiator::start_with(&device, &[CHACHA]).unwrap();
        let (responder, second) = Responder::respond(&server, &first).unwrap();
        initiator.read_response(&second).unwrap();
        let mut third = vec![0u8; MAX_HANDSHAKE_LEN];
        let len = initiator.state.write_message(&[], &mut third).unwrap();
        third.truncate(len);
        let snow_client = initiator.state.into_stateless_transport_mode().unwrap();
        let (_, channel) = responder.finish(&third).unwrap();
        assert_eq!(channel.cipher(), CHACHA);
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

        // Same builds agree; other payloads pass this check, as before (a
        // normal build then reads them as the server's cipher choice).
        check_peer_build(HANDSHAKE_PAYLOAD, "server").unwrap();
        if ENCRYPTED {
            check_peer_build(b"something newer", "server").unwrap();
        } else {
            assert!(check_peer_build(b"something newer", "server").is_err());
        }
    }

    /// A snow handshake state with `key`, for playing a peer by hand.
    fn snow_peer(key: &StaticKey, initiator: bool) -> HandshakeState {
        let builder = Builder::new(params())
            .local_private_key(&key.private)
            .and_then(|builder| builder.prologue(SUBPROTOCOL.as_bytes()))
            .unwrap();
        if initiator {
            builder.build_initiator().unwrap()
        } else {
            builder.build_responder().unwrap()
        }
    }

    /// Writes a handshake message with `payload` from a snow state.
    fn snow_write(state: &mut HandshakeState, payload: &[u8]) -> Vec<u8> {
        let mut message = vec![0u8; MAX_HANDSHAKE_LEN];
        let len = state.write_message(payload, &mut message).unwrap();
        message.truncate(len);
        message
    }

    /// Reads a handshake message into a snow state; returns its payload.
    fn snow_read(state: &mut HandshakeState, message: &[u8]) -> Vec<u8> {
        let mut payload = vec![0u8; MAX_HANDSHAKE_LEN];
        let len = state.read_message(message, &mut payload).unwrap();
        payload.truncate(len);
        payload
    }

    /// The transport cipher negotiation (not in the bench build, which
    /// negotiates nothing).
    #[cfg(not(feature = "insecure-plaintext-bench"))]
    mod negotiation {
        use super::*;
        use rmpv::Value;
        use snow::params::CipherChoice;
        use snow::resolvers::{CryptoResolver, DefaultResolver};

        /// MessagePack bytes of `value`.
        fn pack(value: &Value) -> Vec<u8> {
            let mut bytes = Vec::new();
            rmpv::encode::write_value(&mut bytes, value).unwrap();
            bytes
        }

        /// `{"aead": [names]}`.
        fn offer_of(names: &[&str]) -> Vec<u8> {
            let names = names.iter().map(|name| Value::from(*name)).collect();
            pack(&Value::Map(vec![(
                Value::from("aead"),
                Value::Array(names),
            )]))
        }

        /// The handshake error of `result`, or a panic.
        fn handshake_error<T: fmt::Debug>(result: Result<T, SecureError>) -> String {
            match result {
                Err(SecureError::Handshake(message)) => message,
                other => panic!("expected a handshake error, got {other:?}"),
            }
        }

        #[test]
        fn the_offer_and_the_choice_are_the_documented_maps() {
            let device = StaticKey::generate().unwrap();
            let (_, first) = Initiator::start_with(&device, &[AES, CHACHA, AES]).unwrap();
            // Message 1 is `e` (32 bytes) and the offer in the clear.
            assert_eq!(first[32..], offer_of(&["AESGCM", "ChaChaPoly"]));
            assert_eq!(
                hex(&first[32..]),
                "81a46165616492a641455347434daa436861436861506f6c79"
            );
            let (_, first) = Initiator::start_with(&device, &[CHACHA]).unwrap();
            assert_eq!(first[32..], offer_of(&["ChaChaPoly"]));
            assert_eq!(
                encode_choice(AES).unwrap(),
                pack(&Value::Map(vec![(
                    Value::from("aead"),
                    Value::from("AESGCM")
                )]))
            );
            assert_eq!(
                hex(&encode_choice(AES).unwrap()),
                "81a461656164a641455347434d"
            );
            assert_eq!(AES.to_string(), "AESGCM");
            assert_eq!(CHACHA.to_string(), "ChaChaPoly");
            for cipher in [AES, CHACHA] {
                assert_eq!(
                    TransportCipher::from_noise_name(cipher.noise_name()),
                    Some(cipher)
                );
            }
            assert_eq!(TransportCipher::from_noise_name("aesgcm"), None);
        }

        #[test]
        fn both_offering_aesgcm_gives_aes256gcm_on_both_sides() {
            let (client, server) = channels(&[AES, CHACHA], &[AES, CHACHA]);
            assert_eq!(client.cipher(), AES);
            assert_eq!(server.cipher(), AES);
            let ((mut client_seal, mut client_open), (mut server_seal, mut server_open)) =
                (client.split(), server.split());
            assert_eq!(client_open.cipher(), AES);
            assert_eq!(server_seal.cipher(), AES);
            for size in [0, 5, MAX_PIECE + 1, 3 * MAX_PIECE, MAX_FRAME_LEN] {
                let frame: Vec<u8> = (0..size).map(|i| (i % 241) as u8).collect();
                let sealed = client_seal.seal(&frame).unwrap();
                assert_eq!(server_open.open(&sealed).unwrap(), frame);
                let sealed = server_seal.seal(&frame).unwrap();
                assert_eq!(client_open.open(&sealed).unwrap(), frame);
            }
        }

        #[test]
        fn the_server_takes_the_first_cipher_of_its_list_that_the_client_offered() {
            let cases: [(&[TransportCipher], &[TransportCipher], TransportCipher); 7] = [
                (&[AES, CHACHA], &[AES, CHACHA], AES),
                (&[CHACHA, AES], &[AES, CHACHA], AES),
                (&[AES], &[AES, CHACHA], AES),
                (&[CHACHA], &[AES, CHACHA], CHACHA),
                (&[AES, CHACHA], &[CHACHA], CHACHA),
                (&[AES, CHACHA], &[CHACHA, AES], CHACHA),
                (&[CHACHA], &[CHACHA], CHACHA),
            ];
            for (offer, accept, expected) in cases {
                let (client, server) = channels(offer, accept);
                assert_eq!(client.cipher(), expected, "{offer:?} {accept:?}");
                assert_eq!(server.cipher(), expected, "{offer:?} {accept:?}");
            }
        }

        #[test]
        fn the_defaults_follow_the_aes_hardware() {
            let expected: &[TransportCipher] = if aes_hardware() {
                &[AES, CHACHA]
            } else {
                &[CHACHA]
            };
            assert_eq!(TransportCipher::defaults(), expected);
            let ((seal, _), (_, open)) = pair();
            let cipher = if aes_hardware() { AES } else { CHACHA };
            assert_eq!((seal.cipher(), open.cipher()), (cipher, cipher));
            #[cfg(target_arch = "x86_64")]
            assert_eq!(
                aes_hardware(),
                std::arch::is_x86_feature_detected!("aes")
                    && std::arch::is_x86_feature_detected!("pclmulqdq")
            );
        }

        #[test]
        fn no_cipher_in_common_or_an_empty_list_fails_the_handshake() {
            let device = StaticKey::generate().unwrap();
            let server = StaticKey::generate().unwrap();
            let (_, first) = Initiator::start_with(&device, &[AES]).unwrap();
            let error = handshake_error(Responder::respond_with(&server, &first, &[CHACHA]));
            assert!(error.contains("no transport cipher in common"), "{error}");
            assert!(
                error.contains("AESGCM") && error.contains("ChaChaPoly"),
                "{error}"
            );
            let error = handshake_error(Initiator::start_with(&device, &[]));
            assert!(error.contains("no transport cipher"), "{error}");
            let error = handshake_error(Responder::respond_with(&server, &first, &[]));
            assert!(error.contains("no transport cipher"), "{error}");
        }

        #[test]
        fn an_older_client_gets_chachapoly_and_an_empty_answer() {
            let device = StaticKey::generate().unwrap();
            let server = StaticKey::generate().unwrap();
            // What a client before the negotiation sends: an empty payload.
            let mut old_client = snow_peer(&device, true);
            let first = snow_write(&mut old_client, b"");
            let (responder, second) =
                Responder::respond_with(&server, &first, &[AES, CHACHA]).unwrap();
            assert_eq!(responder.cipher(), CHACHA);
            assert_eq!(snow_read(&mut old_client, &second), b"", "answer not empty");
            let third = snow_write(&mut old_client, b"");
            let (device_seen, channel) = responder.finish(&third).unwrap();
            assert_eq!(device_seen, device.public());
            assert_eq!(channel.cipher(), CHACHA);
            // And it talks with the old client's (snow's ChaChaPoly) transport.
            let old_client = old_client.into_stateless_transport_mode().unwrap();
            let (mut seal, mut open) = channel.split();
            let sealed = seal.seal(b"hi").unwrap();
            let mut out = [0u8; 64];
            let n = old_client.read_message(0, &sealed[2..], &mut out).unwrap();
            assert_eq!(&out[..n], b"\x01hi");
            let n = old_client.write_message(0, b"\x01ho", &mut out).unwrap();
            let mut message = u16::try_from(n).unwrap().to_be_bytes().to_vec();
            message.extend_from_slice(&out[..n]);
            assert_eq!(open.open(&message).unwrap(), b"ho");
            // A server that accepts only AES-GCM refuses an older client.
            let mut old_client = snow_peer(&device, true);
            let first = snow_write(&mut old_client, b"");
            let error = handshake_error(Responder::respond_with(&server, &first, &[AES]));
            assert!(error.contains("older"), "{error}");
        }

        #[test]
        fn an_older_server_means_chachapoly() {
            let device = StaticKey::generate().unwrap();
            let server = StaticKey::generate().unwrap();
            // What a server before the negotiation does: ignore the offer,
            // answer with an empty payload.
            let (mut initiator, first) = Initiator::start_with(&device, &[AES, CHACHA]).unwrap();
            let mut old_server = snow_peer(&server, false);
            snow_read(&mut old_server, &first);
            let second = snow_write(&mut old_server, b"");
            assert_eq!(initiator.read_response(&second).unwrap(), server.public());
            assert_eq!(initiator.cipher(), Some(CHACHA));
            let (third, channel) = initiator.finish().unwrap();
            assert_eq!(snow_read(&mut old_server, &third), b"");
            assert_eq!(channel.cipher(), CHACHA);
            let old_server = old_server.into_stateless_transport_mode().unwrap();
            let (mut seal, _) = channel.split();
            let sealed = seal.seal(b"hi").unwrap();
            let mut out = [0u8; 64];
            let n = old_server.read_message(0, &sealed[2..], &mut out).unwrap();
            assert_eq!(&out[..n], b"\x01hi");
            // A client that offered only AES-GCM cannot use an older server.
            let (mut initiator, first) = Initiator::start_with(&device, &[AES]).unwrap();
            let mut old_server = snow_peer(&server, false);
            snow_read(&mut old_server, &first);
            let second = snow_write(&mut old_server, b"");
            let error = handshake_error(initiator.read_response(&second));
            assert!(error.contains("older"), "{error}");
        }

        #[test]
        fn a_man_in_the_middle_who_rewrites_the_offer_fails_the_handshake() {
            let device = StaticKey::generate().unwrap();
            let server = StaticKey::generate().unwrap();
            for tampered_offer in [
                offer_of(&["ChaChaPoly"]),
                offer_of(&["ChaChaPoly", "AESGCM"]),
                b"".to_vec(),
            ] {
                let (mut initiator, first) =
                    Initiator::start_with(&device, &[AES, CHACHA]).unwrap();
                let mut tampered = first[..32].to_vec();
                tampered.extend_from_slice(&tampered_offer);
                assert_ne!(tampered, first);
                // The server takes the rewritten offer at face value...
                let (responder, second) =
                    Responder::respond_with(&server, &tampered, &[AES, CHACHA]).unwrap();
                if tampered_offer == offer_of(&["ChaChaPoly"]) || tampered_offer.is_empty() {
                    assert_eq!(responder.cipher(), CHACHA, "downgraded on the server");
                }
                // ...but the offer is in the handshake hash: the client
                // cannot authenticate the answer, so no channel opens.
                let error = handshake_error(initiator.read_response(&second));
                assert!(!error.is_empty());
                assert!(initiator.finish().is_err());
            }
            // Control: the same exchange untouched goes through.
            let (mut initiator, first) = Initiator::start_with(&device, &[AES, CHACHA]).unwrap();
            let (responder, second) =
                Responder::respond_with(&server, &first, &[AES, CHACHA]).unwrap();
            initiator.read_response(&second).unwrap();
            let (third, client) = initiator.finish().unwrap();
            let (_, server_channel) = responder.finish(&third).unwrap();
            assert_eq!((client.cipher(), server_channel.cipher()), (AES, AES));
        }

        /// Builds a first message with `payload` as the offer and gives it to
        /// a server accepting both ciphers.
        fn respond_to_offer(payload: &[u8]) -> Result<TransportCipher, SecureError> {
            let device = StaticKey::generate().unwrap();
            let server = StaticKey::generate().unwrap();
            let mut client = snow_peer(&device, true);
            let first = snow_write(&mut client, payload);
            let (responder, second) = Responder::respond_with(&server, &first, &[AES, CHACHA])?;
            // The choice the client reads is the one the server made.
            assert_eq!(
                snow_read(&mut client, &second),
                encode_choice(responder.cipher()).unwrap()
            );
            Ok(responder.cipher())
        }

        /// An offer of exactly `len` bytes, valid but for its length: the two
        /// ciphers and one unknown name filling it up.
        fn offer_of_len(len: usize) -> Vec<u8> {
            for pad in 0..len {
                let offer = offer_of(&["ChaChaPoly", &"x".repeat(pad), "AESGCM"]);
                if offer.len() == len {
                    return offer;
                }
            }
            panic!("no offer of {len} bytes");
        }

        #[test]
        fn malformed_unknown_or_oversized_offers_are_refused() {
            let aead = || Value::from("aead");
            let names = || Value::Array(vec![Value::from("AESGCM")]);
            // An unknown entry nested `levels` deep, the outer map included.
            let nested = |levels: usize| {
                let mut value = Value::from(1);
                for _ in 1..levels {
                    value = Value::Array(vec![value]);
                }
                pack(&Value::Map(vec![
                    (aead(), names()),
                    (Value::from("x"), value),
                ]))
            };
            let mut trailing = offer_of(&["AESGCM"]);
            trailing.push(0);
            let mut truncated = offer_of(&["AESGCM"]);
            truncated.pop();
            let cases: Vec<(&str, Vec<u8>, &str)> = vec![
                ("an array", pack(&names()), "malformed"),
                ("a string", pack(&Value::from("AESGCM")), "malformed"),
                (
                    "no aead",
                    pack(&Value::Map(vec![(Value::from("ciphers"), names())])),
                    "malformed",
                ),
                (
                    "a name, not a list",
                    pack(&Value::Map(vec![(aead(), Value::from("AESGCM"))])),
                    "malformed",
                ),
                (
                    "a number in the list",
                    pack(&Value::Map(vec![(
                        aead(),
                        Value::Array(vec![Value::from(1)]),
                    )])),
                    "malformed",
                ),
                (
                    "a number as key",
                    pack(&Value::Map(vec![(Value::from(1), names())])),
                    "malformed",
                ),
                (
                    "aead twice",
                    pack(&Value::Map(vec![(aead(), names()), (aead(), names())])),
                    "malformed",
                ),
                (
                    "nested too deep",
                    nested(NEGOTIATION_DEPTH + 1),
                    "malformed",
                ),
                (
                    "a huge announced list",
                    vec![
                        0x81, 0xa4, b'a', b'e', b'a', b'd', 0xdd, 0xff, 0xff, 0xff, 0xff,
                    ],
                    "malformed",
                ),
                ("trailing bytes", trailing, "malformed"),
                ("truncated", truncated, "malformed"),
                ("garbage", vec![0xc1], "malformed"),
                (
                    "unknown names only",
                    offer_of(&["AES128GCM", "chachapoly"]),
                    "no known cipher",
                ),
                ("no names", offer_of(&[]), "no known cipher"),
                (
                    "too long",
                    offer_of_len(MAX_NEGOTIATION_LEN + 1),
                    "over the limit",
                ),
            ];
            for (what, offer, expected) in cases {
                let error = handshake_error(respond_to_offer(&offer));
                assert!(error.contains(expected), "{what}: {error}");
                assert!(error.contains("offer"), "{what}: {error}");
            }
            // Unknown names and entries are skipped; the bound is inclusive.
            let future = pack(&Value::Map(vec![
                (
                    Value::from("future"),
                    Value::Map(vec![(
                        Value::from("a"),
                        Value::Array(vec![Value::from(1), Value::Nil]),
                    )]),
                ),
                (
                    aead(),
                    Value::Array(vec![Value::from("AES512OCB"), Value::from("ChaChaPoly")]),
                ),
            ]));
            assert_eq!(respond_to_offer(&future).unwrap(), CHACHA);
            assert_eq!(respond_to_offer(&nested(NEGOTIATION_DEPTH)).unwrap(), AES);
            assert_eq!(
                respond_to_offer(&offer_of_len(MAX_NEGOTIATION_LEN)).unwrap(),
                AES
            );
        }

        #[test]
        fn a_choice_not_offered_unknown_malformed_or_oversized_is_refused() {
            let device = StaticKey::generate().unwrap();
            let server = StaticKey::generate().unwrap();
            let choice = |value: Value| pack(&Value::Map(vec![(Value::from("aead"), value)]));
            let mut padded = Vec::new();
            for pad in 0.. {
                padded = pack(&Value::Map(vec![
                    (Value::from("aead"), Value::from("ChaChaPoly")),
                    (Value::from("pad"), Value::from("x".repeat(pad))),
                ]));
                if padded.len() > MAX_NEGOTIATION_LEN {
                    break;
                }
            }
            let cases: Vec<(Vec<u8>, &str)> = vec![
                (choice(Value::from("AESGCM")), "did not offer"),
                (choice(Value::from("AES512OCB")), "unknown cipher"),
                (
                    choice(Value::Array(vec![Value::from("ChaChaPoly")])),
                    "malformed",
                ),
                (pack(&Value::from("ChaChaPoly")), "malformed"),
                (
                    pack(&Value::Map(vec![(
                        Value::from("cipher"),
                        Value::from("ChaChaPoly"),
                    )])),
                    "malformed",
                ),
                (vec![0xc1], "malformed"),
                (padded, "over the limit"),
            ];
            for (payload, expected) in cases {
                let (mut initiator, first) = Initiator::start_with(&device, &[CHACHA]).unwrap();
                let mut fake_server = snow_peer(&server, false);
                snow_read(&mut fake_server, &first);
                let second = snow_write(&mut fake_server, &payload);
                let error = handshake_error(initiator.read_response(&second));
                assert!(error.contains(expected), "{payload:02x?}: {error}");
                assert!(error.contains("choice"), "{error}");
                assert!(initiator.finish().is_err());
            }
            // Control: a choice with an extra entry, of an offered cipher, goes through.
            let (mut initiator, first) = Initiator::start_with(&device, &[CHACHA]).unwrap();
            let mut fake_server = snow_peer(&server, false);
            snow_read(&mut fake_server, &first);
            let second = snow_write(
                &mut fake_server,
                &pack(&Value::Map(vec![
                    (Value::from("later"), Value::from(7)),
                    (Value::from("aead"), Value::from("ChaChaPoly")),
                ])),
            );
            initiator.read_response(&second).unwrap();
            assert_eq!(initiator.cipher(), Some(CHACHA));
        }

        /// Runs a handshake forced to `cipher`, keeping the split keys from
        /// the client's handshake state; checks that every piece sealed by
        /// either side is, byte for byte, snow's own Noise cipher `choice`
        /// under that key and counter.
        fn pieces_are_snows(cipher: TransportCipher, choice: CipherChoice) {
            let device = StaticKey::generate().unwrap();
            let server = StaticKey::generate().unwrap();
            let (mut initiator, first) = Initiator::start_with(&device, &[cipher]).unwrap();
            let (responder, second) = Responder::respond_with(&server, &first, &[cipher]).unwrap();
            initiator.read_response(&second).unwrap();
            let third = snow_write(&mut initiator.state, b"");
            let (to_server, to_client) = initiator.state.dangerously_get_raw_split();
            let client = Channel::open(initiator.state, cipher).unwrap();
            let (_, server_channel) = responder.finish(&third).unwrap();
            assert_eq!((client.cipher(), server_channel.cipher()), (cipher, cipher));
            let (mut client_seal, _) = client.split();
            let (mut server_seal, _) = server_channel.split();
            for (seal, key) in [(&mut client_seal, to_server), (&mut server_seal, to_client)] {
                let mut reference = DefaultResolver.resolve_cipher(&choice).unwrap();
                reference.set(&key);
                let mut counter = 0u64;
                // Three pieces, then one: counters 0 to 3, so that the
                // byte order of the nonce matters.
                for size in [2 * MAX_PIECE + 300, 17] {
                    let frame: Vec<u8> = (0..size).map(|i| (i * 7 % 256) as u8).collect();
                    let sealed = seal.seal(&frame).unwrap();
                    let mut expected = Vec::new();
                    let parts: Vec<&[u8]> = frame.chunks(MAX_PIECE).collect();
                    for (index, part) in parts.iter().enumerate() {
                        let mut plain = vec![if index + 1 == parts.len() { LAST } else { MORE }];
                        plain.extend_from_slice(part);
                        let mut out = vec![0u8; plain.len() + TAG_LEN];
                        let n = reference.encrypt(counter, &[], &plain, &mut out);
                        assert_eq!(n, out.len());
                        expected.extend_from_slice(&u16::try_from(n).unwrap().to_be_bytes());
                        expected.extend_from_slice(&out);
                        counter += 1;
                    }
                    assert!(
                        sealed == expected,
                        "{cipher}: frame of {size} bytes differs from snow's"
                    );
                }
            }
        }

        #[test]
        fn the_aesgcm_transport_is_noise_aesgcm_as_snow_computes_it() {
            pieces_are_snows(AES, CipherChoice::AESGCM);
        }

        #[test]
        fn the_chachapoly_transport_is_noise_chachapoly_as_snow_computes_it() {
            pieces_are_snows(CHACHA, CipherChoice::ChaChaPoly);
        }

        #[test]
        fn the_nonces_are_big_endian_for_aesgcm_and_little_endian_for_chachapoly() {
            let n = 0x0102_0304_0506_0708;
            assert_eq!(
                noise_nonce(AES, n).unwrap().as_ref(),
                &[0, 0, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8]
            );
            assert_eq!(
                noise_nonce(CHACHA, n).unwrap().as_ref(),
                &[0, 0, 0, 0, 8, 7, 6, 5, 4, 3, 2, 1]
            );
            assert!(noise_nonce(AES, u64::MAX).is_err());
        }

        #[test]
        fn a_frame_of_one_cipher_does_not_open_with_the_other() {
            // Same keys, other cipher: as if the two sides disagreed.
            let device = StaticKey::generate().unwrap();
            let server = StaticKey::generate().unwrap();
            let (mut initiator, first) = Initiator::start_with(&device, &[AES]).unwrap();
            let (responder, second) = Responder::respond_with(&server, &first, &[AES]).unwrap();
            initiator.read_response(&second).unwrap();
            let third = snow_write(&mut initiator.state, b"");
            let client = Channel::open(initiator.state, CHACHA).unwrap();
            let (_, server_channel) = responder.finish(&third).unwrap();
            let (mut seal, _) = client.split();
            let (_, mut open) = server_channel.split();
            assert!(matches!(
                open.open(&seal.seal(b"hi").unwrap()),
                Err(SecureError::Tampered)
            ));
        }
    }

    /// Rekeying of the AES-256-GCM transport keys (the bench build seals
    /// nothing, so has nothing to rekey: see `plaintext` below).
    #[cfg(not(feature = "insecure-plaintext-bench"))]
    mod rekey {
        use super::*;
        use snow::params::CipherChoice;
        use snow::resolvers::{CryptoResolver, DefaultResolver};

        /// Both ends of a channel forced to `cipher` and rekeying every
        /// `interval` pieces, as (client, server), with the split keys
        /// (client → server, server → client).
        fn rekeying(
            cipher: TransportCipher,
            interval: u64,
        ) -> (Halves, Halves, [u8; 32], [u8; 32]) {
            let device = StaticKey::generate().unwrap();
            let server = StaticKey::generate().unwrap();
            let (mut initiator, first) = Initiator::start_with(&device, &[cipher]).unwrap();
            let (responder, second) = Responder::respond_with(&server, &first, &[cipher]).unwrap();
            initiator.read_response(&second).unwrap();
            let third = snow_write(&mut initiator.state, b"");
            let (to_server, to_client) = initiator.state.dangerously_get_raw_split();
            let client = Channel::open(initiator.state, cipher)
                .unwrap()
                .with_rekey_interval(interval);
            let (_, server) = responder.finish(&third).unwrap();
            let server = server.with_rekey_interval(interval);
            assert_eq!((client.cipher(), server.cipher()), (cipher, cipher));
            (client.split(), server.split(), to_server, to_client)
        }

        /// Noise's cipher `choice` as snow computes it, sealing frames the
        /// way [`Sealer`] does; with `rekey_every`, snow's own `rekey()`
        /// runs before each piece whose counter is a non-zero multiple of it.
        struct SnowSealer {
            cipher: Box<dyn snow::types::Cipher>,
            counter: u64,
            rekey_every: Option<u64>,
        }

        impl SnowSealer {
            fn new(choice: CipherChoice, key: &[u8; 32], rekey_every: Option<u64>) -> SnowSealer {
                let mut cipher = DefaultResolver.resolve_cipher(&choice).unwrap();
                cipher.set(key);
                SnowSealer {
                    cipher,
                    counter: 0,
                    rekey_every,
                }
            }

            /// The sealed piece of counter `self.counter` (length prefix
            /// included), rekeying first if it is due.
            fn piece(&mut self, flag: u8, part: &[u8]) -> Vec<u8> {
                if let Some(every) = self.rekey_every
                    && self.counter > 0
                    && self.counter.is_multiple_of(every)
                {
                    self.cipher.rekey();
                }
                let mut plain = vec![flag];
                plain.extend_from_slice(part);
                let mut out = vec![0u8; plain.len() + TAG_LEN];
                let n = self.cipher.encrypt(self.counter, &[], &plain, &mut out);
                assert_eq!(n, out.len());
                self.counter += 1;
                let mut piece = u16::try_from(n).unwrap().to_be_bytes().to_vec();
                piece.extend_from_slice(&out);
                piece
            }

            fn seal(&mut self, frame: &[u8]) -> Vec<u8> {
                let mut parts: Vec<&[u8]> = frame.chunks(MAX_PIECE).collect();
                if parts.is_empty() {
                    parts.push(&[]);
                }
                let last = parts.len() - 1;
                let mut sealed = Vec::new();
                for (index, part) in parts.into_iter().enumerate() {
                    sealed.extend(self.piece(if index == last { LAST } else { MORE }, part));
                }
                sealed
            }
        }

        /// A frame of `size` bytes, different for each `seed`.
        fn frame(size: usize, seed: usize) -> Vec<u8> {
            (0..size)
                .map(|i| ((i * 7 + seed * 13) % 256) as u8)
                .collect()
        }

        /// Frame sizes of one, two, three, four and up to 17 pieces, mixed.
        const SIZES: [usize; 12] = [
            0,
            5,
            MAX_PIECE + 1,
            17,
            3 * MAX_PIECE,
            MAX_PIECE,
            MAX_FRAME_LEN,
            1,
            2 * MAX_PIECE + 9,
            0,
            4 * MAX_PIECE - 1,
            100,
        ];

        #[test]
        fn aesgcm_frames_round_trip_across_many_rekeys() {
            for interval in [1, 2, 3, 5] {
                let ((mut client_seal, mut client_open), (mut server_seal, mut server_open), _, _) =
                    rekeying(AES, interval);
                for (seed, size) in SIZES.into_iter().chain(SIZES.into_iter().rev()).enumerate() {
                    let frame = frame(size, seed);
                    let sealed = client_seal.seal(&frame).unwrap();
                    assert_eq!(
                        server_open.open(&sealed).unwrap(),
                        frame,
                        "{interval} {size}"
                    );
                    let sealed = server_seal.seal(&frame).unwrap();
                    let opened = client_open.open_unmoved(&sealed).unwrap();
                    assert_eq!(
                        &opened.buffer[opened.start..],
                        &frame[..],
                        "{interval} {size}"
                    );
                    // Each side's key is the one after `counter / interval` rekeys.
                    for (key, counter) in [
                        (&client_seal.key, client_seal.nonce),
                        (&server_open.key, server_open.nonce),
                        (&server_seal.key, server_seal.nonce),
                        (&client_open.key, client_open.nonce),
                    ] {
                        // The last piece sealed or opened, `counter - 1`, used it.
                        assert_eq!(key.rekeys, (counter - 1) / interval, "{interval} {size}");
                    }
                }
                assert!(
                    client_seal.key.rekeys >= 10,
                    "only {} rekeys",
                    client_seal.key.rekeys
                );
            }
        }

        #[test]
        fn aesgcm_pieces_are_snows_with_its_rekey_every_interval() {
            for interval in [2, 3] {
                let ((mut client_seal, _), (mut server_seal, _), to_server, to_client) =
                    rekeying(AES, interval);
                for (seal, key) in [(&mut client_seal, to_server), (&mut server_seal, to_client)] {
                    let mut reference = SnowSealer::new(CipherChoice::AESGCM, &key, Some(interval));
                    let mut never_rekeyed = SnowSealer::new(CipherChoice::AESGCM, &key, None);
                    for (seed, size) in SIZES.into_iter().enumerate() {
                        let frame = frame(size, seed);
                        let sealed = seal.seal(&frame).unwrap();
                        let first_counter = reference.counter;
                        let expected = reference.seal(&frame);
                        assert!(
                            sealed == expected,
                            "interval {interval}: frame {seed} of {size} bytes (pieces from \
                             counter {first_counter}) differs from snow's"
                        );
                        // With the split key as it was, only the pieces before
                        // the first rekey would be the same.
                        let stale = never_rekeyed.seal(&frame);
                        if first_counter >= interval {
                            assert_ne!(sealed[..18], stale[..18], "counter {first_counter}");
                        } else if reference.counter <= interval {
                            assert_eq!(sealed, stale);
                        }
                    }
                    assert!(reference.counter > 10 * interval);
                }
            }
        }

        #[test]
        fn the_piece_at_the_interval_is_sealed_with_the_rekeyed_key() {
            let interval = 3;
            let ((mut seal, _), (_, mut open), to_server, _) = rekeying(AES, interval);
            let mut old = SnowSealer::new(CipherChoice::AESGCM, &to_server, None);
            let mut rekeyed = SnowSealer::new(CipherChoice::AESGCM, &to_server, None);
            // Counters 0 to 2 under the split key, same as snow's.
            for seed in 0..3 {
                let sealed = seal.seal(&frame(9, seed)).unwrap();
                assert_eq!(sealed, old.seal(&frame(9, seed)));
                assert_eq!(open.open(&sealed).unwrap(), frame(9, seed));
            }
            // Counter 3: snow's key after one `rekey()`, at the same nonce.
            let sealed = seal.seal(b"after").unwrap();
            assert_ne!(sealed, old.seal(b"after"), "the key did not change");
            rekeyed.cipher.rekey();
            rekeyed.counter = 3;
            assert_eq!(sealed, rekeyed.seal(b"after"));
            assert_eq!(open.open(&sealed).unwrap(), b"after");
            // The rekey is Noise's: the first 32 bytes of the encryption of
            // 32 zero bytes at the last nonce, 4 zero bytes and 8 of 0xff.
            assert_eq!(
                nonce_bytes(AES, u64::MAX),
                [0, 0, 0, 0, 255, 255, 255, 255, 255, 255, 255, 255]
            );
            let mut by_hand = DefaultResolver
                .resolve_cipher(&CipherChoice::AESGCM)
                .unwrap();
            by_hand.set(&to_server);
            let mut out = [0u8; 32 + TAG_LEN];
            by_hand.encrypt(u64::MAX, &[], &[0; 32], &mut out);
            by_hand.set(out[..32].try_into().unwrap());
            let mut piece = vec![LAST];
            piece.extend_from_slice(b"after");
            let mut expected = vec![0u8; piece.len() + TAG_LEN];
            by_hand.encrypt(3, &[], &piece, &mut expected);
            assert_eq!(sealed[2..], expected);
            // A sealer that starts at counter 10 (three rekeys due at once)
            // seals with the key after 10 / 3 = 3 rekeys.
            let ((mut seal, _), _, to_server, _) = rekeying(AES, interval);
            seal.nonce = 10;
            let mut reference = SnowSealer::new(CipherChoice::AESGCM, &to_server, None);
            for _ in 0..3 {
                reference.cipher.rekey();
            }
            reference.counter = 10;
            assert_eq!(seal.seal(b"x").unwrap(), reference.seal(b"x"));
            assert_eq!(seal.key.rekeys, 3);
        }

        #[test]
        fn a_tampered_message_at_a_rekey_boundary_fails_and_moves_nothing() {
            let interval = 3;
            let ((mut seal, _), (_, mut open), _, _) = rekeying(AES, interval);
            // Counters 0 and 1.
            let a = seal.seal(&frame(MAX_PIECE + 1, 0)).unwrap();
            assert_eq!(open.open(&a).unwrap(), frame(MAX_PIECE + 1, 0));
            // Counters 2, 3 and 4: the rekey falls between the first two pieces.
            let b_frame = frame(2 * MAX_PIECE + 40, 1);
            let b = seal.seal(&b_frame).unwrap();
            // Counter 6 of single-piece frames is the next rekey: it is
            // due before the first piece of `d`.
            let c = seal.seal(b"c").unwrap();
            let d = seal.seal(b"d").unwrap();
            let e = seal.seal(b"e").unwrap();
            let piece_starts = |message: &[u8]| {
                let mut starts = Vec::new();
                let mut at = 0;
                while at < message.len() {
                    starts.push(at);
                    at += 2 + usize::from(u16::from_be_bytes([message[at], message[at + 1]]));
                }
                starts
            };
            let unmoved = |open: &Opener, counter: u64, rekeys: u64| {
                assert_eq!((open.nonce, open.key.rekeys), (counter, rekeys));
            };
            let starts = piece_starts(&b);
            assert_eq!(starts.len(), 3);
            // A flipped byte in each piece (before, at and after the boundary),
            // in its ciphertext and in its tag.
            for start in &starts {
                let end = start + 2 + usize::from(u16::from_be_bytes([b[*start], b[start + 1]]));
                for at in [start + 2, start + 10, end - 1] {
                    let mut bad = b.clone();
                    bad[at] ^= 0x40;
                    assert!(
                        matches!(open.open(&bad), Err(SecureError::Tampered)),
                        "byte {at}"
                    );
                    unmoved(&open, 2, 0);
                }
            }
            // Cut after the piece past the boundary; pieces swapped across it.
            assert!(open.open(&b[..starts[2]]).is_err());
            unmoved(&open, 2, 0);
            let mut swapped = b[starts[1]..starts[2]].to_vec();
            swapped.extend_from_slice(&b[..starts[1]]);
            swapped.extend_from_slice(&b[starts[2]..]);
            assert!(open.open(&swapped).is_err());
            unmoved(&open, 2, 0);
            // A message from one key too far (`d` in place of `c`).
            assert!(open.open(&d).is_err());
            unmoved(&open, 2, 0);
            // The untampered message opens, with the rekey.
            assert_eq!(open.open(&b).unwrap(), b_frame);
            unmoved(&open, 5, 1);
            assert_eq!(open.open(&c).unwrap(), b"c");
            // A rekey due before the first piece of a message that fails.
            let mut bad = d.clone();
            bad[4] ^= 1;
            assert!(open.open(&bad).is_err());
            assert!(open.open(&d[..d.len() - 1]).is_err());
            assert!(open.open(&e).is_err(), "`e` skips `d`");
            unmoved(&open, 6, 1);
            assert_eq!(open.open(&d).unwrap(), b"d");
            unmoved(&open, 7, 2);
            assert_eq!(open.open(&e).unwrap(), b"e");
            assert!(open.open(&e).is_err(), "a replay was accepted");
            unmoved(&open, 8, 2);
        }

        #[test]
        fn chachapoly_is_never_rekeyed() {
            let interval = 2;
            let (
                (mut client_seal, mut client_open),
                (mut server_seal, mut server_open),
                to_server,
                to_client,
            ) = rekeying(CHACHA, interval);
            for (seal, open, key) in [
                (&mut client_seal, &mut server_open, to_server),
                (&mut server_seal, &mut client_open, to_client),
            ] {
                let mut reference = SnowSealer::new(CipherChoice::ChaChaPoly, &key, None);
                for (seed, size) in SIZES.into_iter().enumerate() {
                    let frame = frame(size, seed);
                    let sealed = seal.seal(&frame).unwrap();
                    assert!(
                        sealed == reference.seal(&frame),
                        "frame {seed} of {size} bytes"
                    );
                    assert_eq!(open.open(&sealed).unwrap(), frame);
                }
                assert!(reference.counter > 10 * interval);
                assert_eq!((seal.key.rekeys, open.key.rekeys), (0, 0));
            }
        }

        #[test]
        fn the_default_interval_is_for_aesgcm_only() {
            const { assert!(REKEY_INTERVAL.is_power_of_two() && REKEY_INTERVAL >= 1 << 16) };
            for (cipher, interval) in [(AES, NonZeroU64::new(REKEY_INTERVAL)), (CHACHA, None)] {
                let ((seal, open), (server_seal, server_open)) = pair_of(&[cipher]);
                for key in [&seal.key, &open.key, &server_seal.key, &server_open.key] {
                    assert_eq!(key.rekey_interval, interval, "{cipher}");
                    assert_eq!(key.rekeys, 0);
                }
            }
            // At most 64 GiB under one key.
            const { assert!(REKEY_INTERVAL * 65535 <= 64 << 30) };
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
        fn the_build_negotiates_no_cipher() {
            let device = StaticKey::generate().unwrap();
            let server = StaticKey::generate().unwrap();
            // The offer list is ignored: the first payload stays empty.
            let (mut initiator, first) =
                Initiator::start_with(&device, &[TransportCipher::Aes256Gcm]).unwrap();
            let mut peer = snow_peer(&server, false);
            assert_eq!(snow_read(&mut peer, &first), b"");
            let (responder, second) =
                Responder::respond_with(&server, &first, &[TransportCipher::ChaCha20Poly1305])
                    .unwrap();
            assert_eq!(responder.cipher(), TransportCipher::InsecurePlaintext);
            initiator.read_response(&second).unwrap();
            let (third, client) = initiator.finish().unwrap();
            let (_, server_channel) = responder.finish(&third).unwrap();
            assert_eq!(client.cipher(), TransportCipher::InsecurePlaintext);
            assert_eq!(server_channel.cipher(), TransportCipher::InsecurePlaintext);
            assert!(
                client
                    .cipher()
                    .to_string()
                    .contains("insecure-plaintext-bench")
            );
            // A normal client's offer in the first message is ignored too.
            let mut normal_client = snow_peer(&device, true);
            let first = snow_write(
                &mut normal_client,
                &encode_offer(&[TransportCipher::Aes256Gcm]).unwrap(),
            );
            let (_, second) = Responder::respond(&server, &first).unwrap();
            assert_eq!(snow_read(&mut normal_client, &second), PLAINTEXT_MARKER);
        }

        #[test]
        fn frames_are_framed_as_sealed_ones_but_in_the_clear() {
            let ((mut client_seal, mut client_open), (mut server_seal, mut server_open)) = pair();
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
            let ((mut seal, _), (_, mut open)) = pair();
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
            let ((mut seal, _), (_, mut open)) = pair();
            // What a normal build would send with the same key and counter.
            let mut piece = vec![LAST];
            piece.extend_from_slice(b"hello");
            let tag = seal
                .key
                .key
                .seal_in_place_separate_tag(
                    noise_nonce(CHACHA, 0).unwrap(),
                    Aad::empty(),
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
        fn the_build_does_not_rekey() {
            let (client, server) =
                channels(TransportCipher::defaults(), TransportCipher::defaults());
            let (mut seal, _) = client.with_rekey_interval(2).split();
            let (_, mut open) = server.with_rekey_interval(2).split();
            for counter in 0..8u64 {
                let sealed = seal.seal(b"x").unwrap();
                assert_eq!(sealed[sealed.len() - TAG_LEN..], plaintext_tag(counter));
                assert_eq!(open.open(&sealed).unwrap(), b"x");
            }
            for key in [&seal.key, &open.key] {
                assert_eq!((key.rekey_interval, key.rekeys), (None, 0));
            }
        }

        #[test]
        fn garbage_is_refused_without_panicking() {
            let ((_, _), (_, mut open)) = pair();
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
