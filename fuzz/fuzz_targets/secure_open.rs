//! Opens arbitrary bytes with an established secure channel.
//!
//! One channel is set up once (a real Noise XX handshake between fresh keys)
//! and kept for the whole run. The first input byte picks the check:
//!
//! - even: the rest is opened as a sealed message. It must be refused (it
//!   cannot carry a valid tag), without panicking, and without moving the
//!   opener on;
//! - odd: the rest is a plaintext frame, sealed for real; a copy with one
//!   bit flipped (chosen by the input) must be refused, and then the genuine
//!   message must open to the same plaintext, which proves the refusals
//!   before it left the opener in step.

#![no_main]

use std::sync::{LazyLock, Mutex};

use libfuzzer_sys::fuzz_target;
use terminalwire_protocol::secure::{Initiator, Opener, Responder, Sealer, StaticKey};

/// The client's sealer and the server's opener of one channel.
static CHANNEL: LazyLock<Mutex<(Sealer, Opener)>> = LazyLock::new(|| {
    let device = StaticKey::generate().expect("a device key");
    let server = StaticKey::generate().expect("a server key");
    let (mut initiator, first) = Initiator::start(&device).expect("handshake 1");
    let (responder, second) = Responder::respond(&server, &first).expect("handshake 2");
    initiator.read_response(&second).expect("handshake 2 read");
    let (third, client) = initiator.finish().expect("handshake 3");
    let (_, server_channel) = responder.finish(&third).expect("handshake 3 read");
    let (sealer, _) = client.split();
    let (_, opener) = server_channel.split();
    Mutex::new((sealer, opener))
});

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let mut channel = CHANNEL
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    let (sealer, opener) = &mut *channel;
    if mode % 2 == 0 {
        if let Ok(frame) = opener.open(rest) {
            panic!("forged message opened to {} bytes", frame.len());
        }
        return;
    }
    // Odd: the next two bytes choose the bit to flip, the rest is the frame.
    let (choice, frame) = rest.split_at(rest.len().min(2));
    let choice = choice
        .iter()
        .fold(0usize, |acc, &b| acc << 8 | usize::from(b));
    let sealed = sealer.seal(frame).expect("sealing a small frame");
    let bit = choice % (sealed.len() * 8);
    let mut tampered = sealed.clone();
    tampered[bit / 8] ^= 1 << (bit % 8);
    assert!(
        opener.open(&tampered).is_err(),
        "bit {bit} flipped was accepted"
    );
    let opened = opener.open(&sealed).expect("the genuine message opens");
    assert_eq!(opened, frame);
});
