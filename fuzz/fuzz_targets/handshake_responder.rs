//! Feeds an arbitrary first handshake message to the server's responder,
//! then, when that is accepted, an arbitrary last message.
//!
//! Invariants: neither step panics; an accepted first message yields an
//! answer no longer than `MAX_HANDSHAKE_LEN`; a last message that the
//! fuzzer made up never completes the handshake (it would need the private
//! key of a device whose `s, se` it authenticates).

#![no_main]

use std::sync::LazyLock;

use libfuzzer_sys::fuzz_target;
use terminalwire_protocol::secure::{MAX_HANDSHAKE_LEN, Responder, StaticKey};

static SERVER: LazyLock<StaticKey> = LazyLock::new(|| StaticKey::generate().expect("a server key"));

fuzz_target!(|data: &[u8]| {
    // The first byte says where the first message ends; the rest is the last.
    let Some((&split, rest)) = data.split_first() else {
        return;
    };
    let (first, last) = rest.split_at(usize::from(split).min(rest.len()));
    let Ok((responder, answer)) = Responder::respond(&SERVER, first) else {
        return;
    };
    assert!(answer.len() <= MAX_HANDSHAKE_LEN);
    if let Ok((device, _)) = responder.finish(last) {
        panic!("a made-up last message completed the handshake as {device:?}");
    }
});
