//! Frames to bytes and back.
//!
//! Encoding writes a MessagePack map with string keys (`rmp_serde::to_vec_named`).
//! Decoding first checks that the bytes are exactly one MessagePack map (no
//! trailing bytes, nesting at most [`MAX_DEPTH`]) with a string `t` entry, then
//! reads the payload struct for that tag, so a frame with a tag from a newer peer
//! decodes to the `Unknown` variant instead of failing, while a known tag with a
//! broken payload is an error that names the tag.

use std::fmt;
use std::io::Cursor;

use serde::de::{self, Deserialize, Deserializer, IgnoredAny, MapAccess, Visitor};

use crate::frame::{ClientFrame, ServerFrame};
use crate::{MAX_DEPTH, MAX_FRAME_LEN};

/// Why bytes could not be decoded into a frame.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeError {
    /// The frame is larger than [`MAX_FRAME_LEN`].
    #[error("frame of {len} bytes exceeds the limit of {limit} bytes")]
    TooLarge {
        /// The frame's length.
        len: usize,
        /// The limit.
        limit: usize,
    },
    /// The bytes are not exactly one MessagePack map (nested at most
    /// [`MAX_DEPTH`] levels) with a string `t` entry.
    #[error("not a frame (expected a MessagePack map with a string `t` entry): {source}")]
    NotAFrame {
        /// The parser's complaint.
        source: rmp_serde::decode::Error,
        /// The first bytes of the input, for the log.
        head: Vec<u8>,
    },
    /// The tag is known but the payload does not fit it.
    #[error("malformed `{tag}` frame: {source}")]
    Malformed {
        /// The frame's tag.
        tag: String,
        /// The parser's complaint.
        source: rmp_serde::decode::Error,
    },
}

/// A frame type of one direction: [`ClientFrame`] or [`ServerFrame`].
pub trait Frame: Sized + serde::Serialize {
    /// Decodes the payload for a known `tag`; `Ok(None)` for an unknown tag.
    fn decode_tagged(tag: &str, bytes: &[u8]) -> Result<Option<Self>, rmp_serde::decode::Error>;

    /// The value standing for a frame with an unknown tag.
    fn unknown(tag: String) -> Self;
}

/// Encodes a frame as one MessagePack map.
///
/// # Panics
///
/// Never for frames of this crate: they contain only maps, strings, integers,
/// booleans and byte strings, which MessagePack always encodes. An `Unknown`
/// frame encodes as an empty map (it is never meant to be sent).
pub fn encode<F: Frame>(frame: &F) -> Vec<u8> {
    let mut out = Vec::with_capacity(64);
    encode_into(frame, &mut out);
    out
}

/// Encodes a frame, appending to `out`.
pub fn encode_into<F: Frame>(frame: &F, out: &mut Vec<u8>) {
    // Serialising into a Vec cannot fail for our types; an `Unknown` variant is
    // skipped by serde and reported as an error, which we map to an empty map.
    // Only what this call appended is replaced: `out` may hold earlier frames.
    let start = out.len();
    if rmp_serde::encode::write_named(out, frame).is_err() {
        out.truncate(start);
        out.push(0x80);
    }
}

/// Decodes one frame.
pub fn decode<F: Frame>(bytes: &[u8]) -> Result<F, DecodeError> {
    if bytes.len() > MAX_FRAME_LEN {
        return Err(DecodeError::TooLarge {
            len: bytes.len(),
            limit: MAX_FRAME_LEN,
        });
    }
    let tag = read_tag(bytes).map_err(|source| DecodeError::NotAFrame {
        source,
        head: bytes[..bytes.len().min(16)].to_vec(),
    })?;
    match F::decode_tagged(&tag, bytes) {
        Ok(Some(frame)) => Ok(frame),
        Ok(None) => Ok(F::unknown(tag)),
        Err(source) => Err(DecodeError::Malformed { tag, source }),
    }
}

/// Reads the `t` entry of a frame, checking on the way that `bytes` hold exactly
/// one MessagePack map, nested no deeper than [`MAX_DEPTH`].
fn read_tag(bytes: &[u8]) -> Result<String, rmp_serde::decode::Error> {
    let mut de = rmp_serde::Deserializer::new(Cursor::new(bytes));
    de.set_max_depth(MAX_DEPTH + 1);
    let Tag(tag) = Tag::deserialize(&mut de)?;
    let trailing = bytes.len() as u64 - de.position();
    if trailing > 0 {
        return Err(rmp_serde::decode::Error::Syntax(format!(
            "{trailing} trailing bytes after the frame"
        )));
    }
    Ok(tag)
}

/// Decodes a frame's payload struct from the whole frame map (the `t` entry is
/// ignored like any unknown entry).
fn payload<'de, T: Deserialize<'de>>(bytes: &'de [u8]) -> Result<T, rmp_serde::decode::Error> {
    let mut de = rmp_serde::Deserializer::from_read_ref(bytes);
    de.set_max_depth(MAX_DEPTH + 1);
    T::deserialize(&mut de)
}

/// The `t` entry of a frame map; other entries are skipped.
struct Tag(String);

impl<'de> Deserialize<'de> for Tag {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct TagVisitor;

        impl<'de> Visitor<'de> for TagVisitor {
            type Value = Tag;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a map with string keys and a string `t` entry")
            }

            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Tag, A::Error> {
                let mut tag = None;
                while let Some(key) = map.next_key::<String>()? {
                    if key != "t" {
                        map.next_value::<IgnoredAny>()?;
                    } else if tag.is_some() {
                        return Err(de::Error::duplicate_field("t"));
                    } else {
                        tag = Some(map.next_value::<String>()?);
                    }
                }
                tag.map(Tag).ok_or_else(|| de::Error::missing_field("t"))
            }
        }

        deserializer.deserialize_map(TagVisitor)
    }
}

macro_rules! tagged {
    ($frame:ident { $($tag:literal => $variant:ident),* $(,)? }) => {
        impl Frame for $frame {
            fn decode_tagged(
                tag: &str,
                bytes: &[u8],
            ) -> Result<Option<Self>, rmp_serde::decode::Error> {
                Ok(Some(match tag {
                    $($tag => $frame::$variant(payload(bytes)?),)*
                    _ => return Ok(None),
                }))
            }

            fn unknown(tag: String) -> Self {
                $frame::Unknown { tag }
            }
        }
    };
}

tagged!(ClientFrame {
    "hello" => Hello,
    "data" => Data,
    "eof" => Eof,
    "window" => Window,
    "response" => Response,
    "signal" => Signal,
    "error" => Error,
    "ack" => Ack,
    "resume" => Resume,
    "detach" => Detach,
});

tagged!(ServerFrame {
    "welcome" => Welcome,
    "incompatible" => Incompatible,
    "data" => Data,
    "window" => Window,
    "request" => Request,
    "exit" => Exit,
    "error" => Error,
    "ack" => Ack,
    "resumed" => Resumed,
    "detached" => Detached,
});

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::*;

    #[test]
    fn unknown_tag_decodes_to_unknown() {
        // {"t": "teleport", "x": 1}
        let bytes = [
            0x82, 0xa1, b't', 0xa8, b't', b'e', b'l', b'e', b'p', b'o', b'r', b't', 0xa1, b'x',
            0x01,
        ];
        let frame: ServerFrame = decode(&bytes).unwrap();
        assert_eq!(
            frame,
            ServerFrame::Unknown {
                tag: "teleport".into()
            }
        );
    }

    #[test]
    fn known_tag_with_bad_payload_is_malformed() {
        // {"t": "exit", "status": "x"}
        let mut bytes = vec![0x82, 0xa1, b't', 0xa4, b'e', b'x', b'i', b't'];
        bytes.extend([0xa6, b's', b't', b'a', b't', b'u', b's', 0xa1, b'x']);
        match decode::<ServerFrame>(&bytes) {
            Err(DecodeError::Malformed { tag, .. }) => assert_eq!(tag, "exit"),
            other => panic!("expected malformed, got {other:?}"),
        }
    }

    #[test]
    fn garbage_and_truncation_are_errors_not_panics() {
        let good = encode(&ServerFrame::Data(Data {
            sid: StreamId::STDOUT,
            bytes: serde_bytes::ByteBuf::from(b"hello world".to_vec()),
        }));
        for cut in 0..good.len() {
            assert!(
                decode::<ServerFrame>(&good[..cut]).is_err(),
                "prefix of {cut} bytes decoded"
            );
        }
        for garbage in [
            &b""[..],
            b"\xc1",
            b"\xff\xff\xff",
            b"GET / HTTP/1.1\r\n",
            b"\x92\x01\x02",
        ] {
            assert!(
                decode::<ClientFrame>(garbage).is_err(),
                "{garbage:?} decoded"
            );
        }
    }

    #[test]
    fn oversized_frames_are_refused_before_parsing() {
        let big = vec![0u8; MAX_FRAME_LEN + 1];
        assert!(matches!(
            decode::<ClientFrame>(&big),
            Err(DecodeError::TooLarge { .. })
        ));
    }

    #[test]
    fn unknown_error_code_is_kept() {
        let frame = ServerFrame::Error(SessionError {
            code: ErrorCode::Other("quota".into()),
            message: "too many".into(),
        });
        assert_eq!(decode::<ServerFrame>(&encode(&frame)).unwrap(), frame);
    }

    #[test]
    fn unknown_operation_keeps_request_id() {
        // {"t":"request","id":7,"op":{"k":"warp"}}
        let mut bytes = vec![0x83, 0xa1, b't', 0xa7];
        bytes.extend(b"request");
        bytes.extend([
            0xa2, b'i', b'd', 0x07, 0xa2, b'o', b'p', 0x81, 0xa1, b'k', 0xa4,
        ]);
        bytes.extend(b"warp");
        let frame: ServerFrame = decode(&bytes).unwrap();
        assert_eq!(
            frame,
            ServerFrame::Request(Request {
                id: RequestId(7),
                op: Operation::Unknown
            })
        );
    }
}
