//! Decodes arbitrary bytes as a `ClientFrame`.
//!
//! Invariants: decoding never panics (nor overflows the stack, however deep
//! the nesting), never accepts more than `MAX_FRAME_LEN` bytes, and a frame
//! it accepts (other than `Unknown`) encodes to bytes that decode to the
//! same frame again.

#![no_main]

use libfuzzer_sys::fuzz_target;
use terminalwire_protocol::{ClientFrame, MAX_FRAME_LEN, codec};

fuzz_target!(|data: &[u8]| {
    let Ok(frame) = codec::decode::<ClientFrame>(data) else {
        return;
    };
    assert!(data.len() <= MAX_FRAME_LEN, "accepted {} bytes", data.len());
    if matches!(frame, ClientFrame::Unknown { .. }) {
        return;
    }
    let again = codec::encode(&frame);
    match codec::decode::<ClientFrame>(&again) {
        Ok(back) => assert_eq!(back, frame, "re-encoding changed the frame"),
        Err(error) => panic!("{frame:?} re-encoded to bytes that do not decode: {error}"),
    }
});
