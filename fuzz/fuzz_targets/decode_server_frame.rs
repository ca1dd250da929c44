//! Decodes arbitrary bytes as a `ServerFrame`.
//!
//! Invariants: decoding never panics (nor overflows the stack, however deep
//! the nesting), never accepts more than `MAX_FRAME_LEN` bytes, and a frame
//! it accepts (other than `Unknown`) encodes to bytes that decode to the
//! same frame again.

#![no_main]

use libfuzzer_sys::fuzz_target;
use terminalwire_protocol::{MAX_FRAME_LEN, ServerFrame, codec};

fuzz_target!(|data: &[u8]| {
    let Ok(frame) = codec::decode::<ServerFrame>(data) else {
        return;
    };
    assert!(data.len() <= MAX_FRAME_LEN, "accepted {} bytes", data.len());
    if matches!(frame, ServerFrame::Unknown { .. }) {
        return;
    }
    let again = codec::encode(&frame);
    match codec::decode::<ServerFrame>(&again) {
        Ok(back) => assert_eq!(back, frame, "re-encoding changed the frame"),
        Err(error) => panic!("{frame:?} re-encoded to bytes that do not decode: {error}"),
    }
});
