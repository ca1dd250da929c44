//! Frames to bytes and back.
//!
//! Encoding writes a MessagePack map with string keys (`rmp_serde::to_vec_named`).
//! Decoding first checks that the bytes are exactly one MessagePack map (no
//! trailing bytes, nesting at most [`MAX_DEPTH`]) with a string `t` entry, then
//! reads the payload struct for that tag, so a frame with a tag from a newer peer
//! decodes to the `Unknown` variant instead of failing, while a known tag with a
//! broken payload is an error that names the tag.

use serde::Deserialize;

use crate::copy;
use crate::frame::{ClientFrame, ServerFrame, StreamId};
use crate::{MAX_DEPTH, MAX_FRAME_LEN, MAX_VALUES};

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

    /// How many bytes of byte strings the frame carries (a chunk of data, a
    /// file's content): [`encode`] reserves room for them up front rather
    /// than copy them again each time the buffer grows.
    fn bulk_len(&self) -> usize;
}

/// Encodes a frame as one MessagePack map.
///
/// # Panics
///
/// Never for frames of this crate: they contain only maps, strings, integers,
/// booleans and byte strings, which MessagePack always encodes. An `Unknown`
/// frame encodes as an empty map (it is never meant to be sent).
pub fn encode<F: Frame>(frame: &F) -> Vec<u8> {
    let mut out = Vec::with_capacity(64 + frame.bulk_len());
    encode_into(frame, &mut out);
    out
}

/// Encodes a frame, appending to `out`.
pub fn encode_into<F: Frame>(frame: &F, out: &mut Vec<u8>) {
    // Serialising into a Vec cannot fail for our types; an `Unknown` variant is
    // skipped by serde and reported as an error, which we map to an empty map.
    // Only what this call appended is replaced: `out` may hold earlier frames.
    let start = out.len();
    if rmp_serde::encode::write_named(&mut BlockWriter(out), frame).is_err() {
        out.truncate(start);
        out.push(0x80);
    }
}

/// Appends what MessagePack writes with [`copy::extend_from_slice`]: a byte
/// string is copied in blocks, clear of glibc's slow `memcpy` case.
struct BlockWriter<'a>(&'a mut Vec<u8>);

impl std::io::Write for BlockWriter<'_> {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        copy::extend_from_slice(self.0, bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The bytes every `data` frame of this crate starts with: a map of three
/// entries, its `t` entry, and the key of its `sid` entry.
const DATA_HEAD: &[u8] = b"\x83\xa1t\xa4data\xa3sid";
/// The key of a `data` frame's last entry.
const BYTES_KEY: &[u8] = b"\xa5bytes";

/// Encodes a `data` frame for stream `sid` carrying `bytes`: the same bytes
/// as [`encode`] with a [`Data`](crate::frame::Data) frame, without first
/// copying `bytes` into one, in a vector of exactly that length.
pub fn encode_data(sid: StreamId, bytes: &[u8]) -> Vec<u8> {
    let sid_len = match sid.0 {
        0..=0x7f => 1,
        0x80..=0xff => 2,
        0x100..=0xffff => 3,
        _ => 5,
    };
    let bin_len = match bytes.len() {
        0..=0xff => 2,
        0x100..=0xffff => 3,
        _ => 5,
    };
    let mut out =
        Vec::with_capacity(DATA_HEAD.len() + sid_len + BYTES_KEY.len() + bin_len + bytes.len());
    out.extend_from_slice(DATA_HEAD);
    // Writing into a Vec cannot fail.
    let _ = rmp::encode::write_uint(&mut out, u64::from(sid.0));
    out.extend_from_slice(BYTES_KEY);
    // Frames are far below 4 GiB (`MAX_FRAME_LEN`); a longer slice would
    // need a length MessagePack cannot write, so it is cut there.
    let len = u32::try_from(bytes.len()).unwrap_or(u32::MAX);
    let _ = rmp::encode::write_bin_len(&mut out, len);
    copy::extend_from_slice(&mut out, &bytes[..len as usize]);
    out
}

/// Recognises a `data` frame encoded exactly as this crate encodes one
/// (entries `t`, `sid`, `bytes` in that order, shortest integer and length
/// forms), and returns its stream and where its bytes lie in `frame`, so
/// that the receiver can take them without a copy. `None` for anything
/// else, which [`decode`] then handles (and judges) as usual; for a frame
/// recognised here, [`decode`] gives the same stream and bytes.
pub fn data_chunk(frame: &[u8]) -> Option<(StreamId, std::ops::Range<usize>)> {
    if frame.len() > MAX_FRAME_LEN {
        return None;
    }
    let rest = frame.strip_prefix(DATA_HEAD)?;
    let (sid, rest) = match *rest {
        [small @ 0x00..=0x7f, ref rest @ ..] => (u32::from(small), rest),
        [0xcc, byte, ref rest @ ..] if byte > 0x7f => (u32::from(byte), rest),
        [0xcd, a, b, ref rest @ ..] if a > 0 => (u32::from(u16::from_be_bytes([a, b])), rest),
        [0xce, a, b, c, d, ref rest @ ..] if a > 0 || b > 0 => {
            (u32::from_be_bytes([a, b, c, d]), rest)
        }
        _ => return None,
    };
    let rest = rest.strip_prefix(BYTES_KEY)?;
    let (len, rest) = match *rest {
        [0xc4, len, ref rest @ ..] => (usize::from(len), rest),
        [0xc5, a, b, ref rest @ ..] if a > 0 => (usize::from(u16::from_be_bytes([a, b])), rest),
        [0xc6, a, b, c, d, ref rest @ ..] if a > 0 || b > 0 => {
            (u32::from_be_bytes([a, b, c, d]) as usize, rest)
        }
        _ => return None,
    };
    (rest.len() == len).then(|| (StreamId(sid), frame.len() - len..frame.len()))
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
/// one MessagePack map, nested no deeper than [`MAX_DEPTH`], of at most
/// [`MAX_VALUES`] values, whose maps (at every level) have string keys.
///
/// Walks the MessagePack markers without decoding values: the entries it
/// skips (a data chunk's bytes, above all) are neither copied nor allocated.
fn read_tag(bytes: &[u8]) -> Result<String, rmp_serde::decode::Error> {
    let mut walk = Walk {
        bytes,
        at: 0,
        values_left: MAX_VALUES,
    };
    let entries = match walk.header(MAX_DEPTH)? {
        Header::Map(entries) => entries,
        _ => return Err(syntax("a frame must be a map")),
    };
    let mut tag = None;
    for _ in 0..entries {
        let key = walk.text()?;
        if key != "t" {
            walk.skip(MAX_DEPTH - 1)?;
        } else if tag.is_some() {
            return Err(syntax("duplicate field `t`"));
        } else {
            tag = Some(walk.text()?.to_owned());
        }
    }
    let trailing = bytes.len() - walk.at;
    if trailing > 0 {
        return Err(syntax(format!("{trailing} trailing bytes after the frame")));
    }
    tag.ok_or_else(|| syntax("missing field `t`"))
}

fn syntax(message: impl Into<String>) -> rmp_serde::decode::Error {
    rmp_serde::decode::Error::Syntax(message.into())
}

/// A cursor over MessagePack bytes that checks structure only.
struct Walk<'a> {
    bytes: &'a [u8],
    at: usize,
    /// Values that may still come ([`MAX_VALUES`] in all).
    values_left: usize,
}

/// What a MessagePack marker announces.
enum Header {
    /// A value with nothing nested: skip this many bytes.
    Scalar(usize),
    /// A string of this many bytes follows.
    Str(usize),
    /// A byte string of this many bytes follows.
    Bin(usize),
    /// This many values follow.
    Array(usize),
    /// This many key-value pairs follow.
    Map(usize),
}

impl<'a> Walk<'a> {
    fn take(&mut self, len: usize) -> Result<&'a [u8], rmp_serde::decode::Error> {
        let end = self
            .at
            .checked_add(len)
            .filter(|end| *end <= self.bytes.len())
            .ok_or_else(|| syntax("the frame ends in the middle of a value"))?;
        let taken = &self.bytes[self.at..end];
        self.at = end;
        Ok(taken)
    }

    fn length(&mut self, width: usize) -> Result<usize, rmp_serde::decode::Error> {
        let taken = self.take(width)?;
        Ok(taken
            .iter()
            .fold(0usize, |len, byte| (len << 8) | usize::from(*byte)))
    }

    /// Reads one marker (and its length field). `levels` is how many levels
    /// of nesting may still open here; a map or array needs one.
    fn header(&mut self, levels: usize) -> Result<Header, rmp_serde::decode::Error> {
        self.values_left = self
            .values_left
            .checked_sub(1)
            .ok_or_else(|| syntax(format!("more than {MAX_VALUES} values in a frame")))?;
        let marker = self.take(1)?[0];
        let header = match marker {
            0x00..=0x7f | 0xe0..=0xff | 0xc0 | 0xc2 | 0xc3 => Header::Scalar(0),
            0x80..=0x8f => Header::Map(usize::from(marker & 0x0f)),
            0x90..=0x9f => Header::Array(usize::from(marker & 0x0f)),
            0xa0..=0xbf => Header::Str(usize::from(marker & 0x1f)),
            0xc1 => return Err(syntax("reserved MessagePack marker 0xc1")),
            0xc4 => Header::Bin(self.length(1)?),
            0xc5 => Header::Bin(self.length(2)?),
            0xc6 => Header::Bin(self.length(4)?),
            // Extensions: a type byte, then the data.
            0xc7 => Header::Scalar(self.length(1)?.saturating_add(1)),
            0xc8 => Header::Scalar(self.length(2)?.saturating_add(1)),
            0xc9 => Header::Scalar(self.length(4)?.saturating_add(1)),
            0xca => Header::Scalar(4),
            0xcb => Header::Scalar(8),
            0xcc | 0xd0 => Header::Scalar(1),
            0xcd | 0xd1 => Header::Scalar(2),
            0xce | 0xd2 => Header::Scalar(4),
            0xcf | 0xd3 => Header::Scalar(8),
            0xd4 => Header::Scalar(2),
            0xd5 => Header::Scalar(3),
            0xd6 => Header::Scalar(5),
            0xd7 => Header::Scalar(9),
            0xd8 => Header::Scalar(17),
            0xd9 => Header::Str(self.length(1)?),
            0xda => Header::Str(self.length(2)?),
            0xdb => Header::Str(self.length(4)?),
            0xdc => Header::Array(self.length(2)?),
            0xdd => Header::Array(self.length(4)?),
            0xde => Header::Map(self.length(2)?),
            0xdf => Header::Map(self.length(4)?),
        };
        if matches!(header, Header::Array(_) | Header::Map(_)) && levels == 0 {
            return Err(rmp_serde::decode::Error::DepthLimitExceeded);
        }
        Ok(header)
    }

    /// Reads a string (a byte string holding UTF-8 counts too, as it does
    /// for serde's `String`).
    fn text(&mut self) -> Result<&'a str, rmp_serde::decode::Error> {
        match self.header(1)? {
            Header::Str(len) | Header::Bin(len) => std::str::from_utf8(self.take(len)?)
                .map_err(|_| syntax("a key or tag that is not UTF-8")),
            _ => Err(syntax("a key or tag that is not a string")),
        }
    }

    /// Skips one value; `levels` as for [`Walk::header`].
    fn skip(&mut self, levels: usize) -> Result<(), rmp_serde::decode::Error> {
        match self.header(levels)? {
            Header::Scalar(len) | Header::Str(len) | Header::Bin(len) => {
                self.take(len)?;
            }
            Header::Array(values) => {
                for _ in 0..values {
                    self.skip(levels - 1)?;
                }
            }
            Header::Map(entries) => {
                for _ in 0..entries {
                    self.text()?;
                    self.skip(levels - 1)?;
                }
            }
        }
        Ok(())
    }
}

/// Decodes a frame's payload struct from the whole frame map (the `t` entry is
/// ignored like any unknown entry).
fn payload<'de, T: Deserialize<'de>>(bytes: &'de [u8]) -> Result<T, rmp_serde::decode::Error> {
    let mut de = rmp_serde::Deserializer::from_read_ref(bytes);
    // The walk bounded the nesting already; serde also counts an extension
    // value as a level, which the walk (and section 2) does not.
    de.set_max_depth(MAX_DEPTH + 2);
    T::deserialize(&mut de)
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

            fn bulk_len(&self) -> usize {
                $frame::bulk_len(self)
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
    "cancel" => Cancel,
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
    fn frames_that_carry_bytes_are_encoded_into_a_buffer_sized_up_front() {
        let bytes = || serde_bytes::ByteBuf::from(vec![5; 100_000]);
        let carrying = [
            ServerFrame::Request(Request {
                id: RequestId(1),
                op: Operation::FileWriteChunk {
                    handle: 1,
                    offset: 0,
                    bytes: bytes(),
                },
            })
            .bulk_len(),
            ServerFrame::Data(Data {
                sid: StreamId::STDOUT,
                bytes: bytes(),
            })
            .bulk_len(),
            ClientFrame::Response(Response::ok(
                RequestId(1),
                Reply::Data {
                    bytes: bytes(),
                    eof: false,
                },
            ))
            .bulk_len(),
        ];
        assert_eq!(carrying, [100_000; 3]);
        assert_eq!(ServerFrame::Exit(Exit { status: 0 }).bulk_len(), 0);
        let frame = ClientFrame::Response(Response::ok(
            RequestId(1),
            Reply::Data {
                bytes: bytes(),
                eof: true,
            },
        ));
        let encoded = encode(&frame);
        // Grown by doubling, the buffer would have a third of its room spare.
        assert!(
            encoded.capacity() - encoded.len() < 64,
            "{}",
            encoded.capacity()
        );
        assert_eq!(decode::<ClientFrame>(&encoded).unwrap(), frame);
    }

    /// The `t` entry as serde reads it: the reference `read_tag` must agree with.
    fn reference_read_tag(bytes: &[u8]) -> Result<String, rmp_serde::decode::Error> {
        use serde::de::{self, Deserializer, MapAccess, SeqAccess, Visitor};
        use std::fmt;

        /// Any value whose maps have string keys (serde's `IgnoredAny`
        /// takes any key).
        struct IgnoredAny;

        impl<'de> Deserialize<'de> for IgnoredAny {
            fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                deserializer.deserialize_ignored_any(AnyVisitor)
            }
        }

        struct AnyVisitor;

        impl<'de> Visitor<'de> for AnyVisitor {
            type Value = IgnoredAny;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("any value with string keys")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<IgnoredAny, A::Error> {
                while map.next_key::<Text>()?.is_some() {
                    map.next_value::<IgnoredAny>()?;
                }
                Ok(IgnoredAny)
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<IgnoredAny, A::Error> {
                while seq.next_element::<IgnoredAny>()?.is_some() {}
                Ok(IgnoredAny)
            }
            fn visit_bool<E>(self, _: bool) -> Result<IgnoredAny, E> {
                Ok(IgnoredAny)
            }
            fn visit_i64<E>(self, _: i64) -> Result<IgnoredAny, E> {
                Ok(IgnoredAny)
            }
            fn visit_u64<E>(self, _: u64) -> Result<IgnoredAny, E> {
                Ok(IgnoredAny)
            }
            fn visit_f64<E>(self, _: f64) -> Result<IgnoredAny, E> {
                Ok(IgnoredAny)
            }
            fn visit_str<E>(self, _: &str) -> Result<IgnoredAny, E> {
                Ok(IgnoredAny)
            }
            fn visit_bytes<E>(self, _: &[u8]) -> Result<IgnoredAny, E> {
                Ok(IgnoredAny)
            }
            fn visit_unit<E>(self) -> Result<IgnoredAny, E> {
                Ok(IgnoredAny)
            }
            fn visit_none<E>(self) -> Result<IgnoredAny, E> {
                Ok(IgnoredAny)
            }
            fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<IgnoredAny, D::Error> {
                IgnoredAny::deserialize(d)
            }
            fn visit_newtype_struct<D: Deserializer<'de>>(
                self,
                d: D,
            ) -> Result<IgnoredAny, D::Error> {
                IgnoredAny::deserialize(d)
            }
            fn visit_enum<A: de::EnumAccess<'de>>(self, data: A) -> Result<IgnoredAny, A::Error> {
                use serde::de::VariantAccess;
                let (IgnoredAny, variant) = data.variant::<IgnoredAny>()?;
                variant.newtype_variant::<IgnoredAny>()
            }
        }

        /// A string key (a `bin` holding UTF-8 counts, as for `String`).
        struct Text;

        impl<'de> Deserialize<'de> for Text {
            fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                String::deserialize(deserializer).map(|_| Text)
            }
        }

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

        let mut de = rmp_serde::Deserializer::new(std::io::Cursor::new(bytes));
        de.set_max_depth(MAX_DEPTH + 1);
        let Tag(tag) = Tag::deserialize(&mut de)?;
        let trailing = bytes.len() as u64 - de.position();
        if trailing > 0 {
            return Err(syntax(format!("{trailing} trailing bytes")));
        }
        Ok(tag)
    }

    /// Tiny deterministic generator (xorshift), so failures reproduce.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }

        fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }
    }

    /// Frames of every shape this crate sends, to mutate.
    fn seeds() -> Vec<Vec<u8>> {
        vec![
            encode(&ServerFrame::Data(Data {
                sid: StreamId::STDOUT,
                bytes: serde_bytes::ByteBuf::from(vec![7; 300]),
            })),
            encode(&ClientFrame::Data(Data {
                sid: StreamId::STDIN,
                bytes: serde_bytes::ByteBuf::from(b"ls -l\n".to_vec()),
            })),
            encode(&ServerFrame::Exit(Exit { status: 3 })),
            encode(&ServerFrame::Request(Request {
                id: RequestId(9),
                op: Operation::EnvGet {
                    name: "HOME".into(),
                },
            })),
            encode(&ClientFrame::Window(WindowAdjust {
                sid: StreamId::STDOUT,
                bytes: 1 << 20,
            })),
            encode(&ServerFrame::Error(SessionError {
                code: ErrorCode::Other("quota".into()),
                message: "too many".into(),
            })),
        ]
    }

    #[test]
    fn the_tag_walker_agrees_with_serde_on_mutated_and_random_input() {
        let mut rng = Rng(0x7a9_3e11_0c0d_ec01);
        let seeds = seeds();
        let (mut tags, mut errors) = (0, 0);
        for round in 0..60_000 {
            let input: Vec<u8> = if round % 4 == 0 {
                // Random bytes, often starting like a map.
                let len = rng.below(48);
                let mut input: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
                if let Some(first) = input.first_mut() {
                    *first = 0x80 | (*first & 0x0f);
                }
                input
            } else {
                let mut input = seeds[rng.below(seeds.len())].clone();
                for _ in 0..rng.below(3) {
                    let at = rng.below(input.len() + 1);
                    match rng.below(4) {
                        0 if at < input.len() => input[at] = rng.next() as u8,
                        1 if at < input.len() => {
                            input.remove(at);
                        }
                        2 => input.truncate(at),
                        _ => input.insert(at, rng.next() as u8),
                    }
                }
                input
            };
            let walked = read_tag(&input);
            let reference = reference_read_tag(&input);
            match (&walked, &reference) {
                (Ok(a), Ok(b)) => {
                    assert_eq!(a, b, "{input:02x?}");
                    tags += 1;
                }
                (Err(_), Err(_)) => errors += 1,
                _ => panic!("{input:02x?}: walker {walked:?}, serde {reference:?}"),
            }
        }
        // Both outcomes must be exercised, or the comparison proves little.
        assert!(
            tags > 5_000 && errors > 5_000,
            "{tags} tags, {errors} errors"
        );
    }

    #[test]
    fn the_tag_walker_agrees_with_serde_on_a_full_chunk_and_its_prefixes() {
        // A 64 KiB chunk: a `bin 32` entry.
        let frame = encode(&ServerFrame::Data(Data {
            sid: StreamId::STDOUT,
            bytes: serde_bytes::ByteBuf::from(vec![1; 1 << 16]),
        }));
        assert_eq!(read_tag(&frame).unwrap(), "data");
        for cut in [1, 10, 15, 16, 17, 20, frame.len() / 2, frame.len() - 1] {
            assert!(read_tag(&frame[..cut]).is_err(), "{cut}");
            assert!(reference_read_tag(&frame[..cut]).is_err(), "{cut}");
        }
    }

    #[test]
    fn data_frames_encoded_directly_match_the_generic_encoding_and_are_recognised() {
        let sizes = [0usize, 1, 31, 32, 255, 256, 65_535, 65_536, 70_000];
        let sids = [0u32, 1, 2, 127, 128, 255, 256, 65_535, 65_536, u32::MAX];
        for len in sizes {
            let bytes: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
            for sid in sids {
                let data = Data {
                    sid: StreamId(sid),
                    bytes: serde_bytes::ByteBuf::from(bytes.clone()),
                };
                let generic = encode(&ServerFrame::Data(data.clone()));
                let direct = encode_data(StreamId(sid), &bytes);
                assert_eq!(direct, generic, "len {len}, sid {sid}");
                // Exactly sized: handing it on as a boxed slice moves nothing.
                assert_eq!(direct.capacity(), direct.len(), "len {len}, sid {sid}");
                let (found, range) = data_chunk(&generic).expect("recognised");
                assert_eq!((found, &generic[range]), (StreamId(sid), &bytes[..]));
                assert_eq!(
                    decode::<ServerFrame>(&generic).unwrap(),
                    ServerFrame::Data(data)
                );
            }
        }
    }

    #[test]
    fn what_the_data_fast_path_accepts_decodes_the_same_way() {
        let mut rng = Rng(0xda7a_c4a9_0000_0001);
        let seeds: Vec<Vec<u8>> = [0usize, 5, 200, 300]
            .into_iter()
            .map(|len| encode_data(StreamId(1), &vec![3; len]))
            .collect();
        let mut recognised = 0;
        for _ in 0..40_000 {
            let mut input = seeds[rng.below(seeds.len())].clone();
            for _ in 0..rng.below(3) {
                let at = rng.below(input.len() + 1);
                match rng.below(4) {
                    0 if at < input.len() => input[at] = rng.next() as u8,
                    1 if at < input.len() => {
                        input.remove(at);
                    }
                    2 => input.truncate(at),
                    _ => input.insert(at, rng.next() as u8),
                }
            }
            if let Some((sid, range)) = data_chunk(&input) {
                recognised += 1;
                let expected = ServerFrame::Data(Data {
                    sid,
                    bytes: serde_bytes::ByteBuf::from(input[range].to_vec()),
                });
                assert_eq!(
                    decode::<ServerFrame>(&input).ok(),
                    Some(expected),
                    "{input:02x?}"
                );
            }
        }
        assert!(recognised > 10_000, "only {recognised} recognised");
        // Another frame, or data in another entry order, is left to `decode`.
        assert!(data_chunk(&encode(&ServerFrame::Exit(Exit { status: 0 }))).is_none());
        let mut reordered = b"\x83\xa1t\xa4data\xa5bytes\xc4\x01x\xa3sid\x01".to_vec();
        assert!(data_chunk(&reordered).is_none());
        assert!(decode::<ServerFrame>(&reordered).is_ok());
        reordered.push(0);
        assert!(data_chunk(&reordered).is_none());
    }

    /// A frame of a million one-byte values took 23–40 MiB to decode for a
    /// moment: at most `MAX_VALUES` values (the frame's map, its keys and
    /// every value at every level) are read.
    #[test]
    fn a_frame_of_more_than_max_values_values_is_not_a_frame() {
        // {"t":"x","y":[nil; n]}: five values besides the nils.
        let frame = |nils: usize| {
            let mut bytes = vec![0x82, 0xa1, b't', 0xa1, b'x', 0xa1, b'y', 0xdd];
            bytes.extend_from_slice(&u32::try_from(nils).unwrap().to_be_bytes());
            bytes.resize(bytes.len() + nils, 0xc0);
            bytes
        };
        assert_eq!(read_tag(&frame(MAX_VALUES - 5)).unwrap(), "x");
        let refused = read_tag(&frame(MAX_VALUES - 4)).unwrap_err();
        assert!(
            refused.to_string().contains("values in a frame"),
            "{refused}"
        );
        assert!(matches!(
            decode::<ServerFrame>(&frame(MAX_VALUES - 4)),
            Err(DecodeError::NotAFrame { .. })
        ));
    }

    /// Nested records are maps with string keys too (section 2): an integer
    /// key would pick a field by its place in the source.
    #[test]
    fn a_nested_map_with_an_integer_key_is_not_a_frame() {
        assert!(read_tag(b"\x82\xa1t\xa1x\xa1y\x81\xa1k\x01").is_ok());
        assert!(read_tag(b"\x82\xa1t\xa1x\xa1y\x81\x00\x01").is_err());
    }

    /// Section 2 counts maps and arrays: an extension value inside the
    /// deepest array is no level of its own.
    #[test]
    fn an_extension_at_the_deepest_level_decodes() {
        // {"t":"exit","status":3,"x":[[[...[fixext1]...]]]}, 31 levels of
        // arrays under the frame's map.
        let mut bytes = b"\x83\xa1t\xa4exit\xa6status\x03\xa1x".to_vec();
        bytes.extend(std::iter::repeat_n(0x91, MAX_DEPTH - 1));
        bytes.extend_from_slice(&[0xd4, 1, 0]);
        assert_eq!(
            decode::<ServerFrame>(&bytes).unwrap(),
            ServerFrame::Exit(Exit { status: 3 })
        );
    }

    #[test]
    fn the_tag_walker_limits_nesting_like_serde() {
        for arrays in [MAX_DEPTH - 2, MAX_DEPTH - 1, MAX_DEPTH, MAX_DEPTH + 5] {
            for container in [0x91u8, 0x81] {
                // {"t":"x","y": <arrays nested containers>}
                let mut bytes = vec![0x82, 0xa1, b't', 0xa1, b'x', 0xa1, b'y'];
                for _ in 0..arrays {
                    bytes.push(container);
                    if container == 0x81 {
                        bytes.extend_from_slice(b"\xa1k");
                    }
                }
                bytes.push(0xc0);
                assert_eq!(
                    read_tag(&bytes).is_ok(),
                    reference_read_tag(&bytes).is_ok(),
                    "{arrays} nested {container:02x}"
                );
                assert_eq!(read_tag(&bytes).is_ok(), arrays < MAX_DEPTH, "{arrays}");
            }
        }
    }

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
