//! The secure channel's edges, driven by snow as a hand-written client:
//! what a peer may put in the last handshake message and how it may cut a
//! sealed frame (PROTOCOL.md section 1).

#![allow(clippy::unwrap_used, reason = "tests fail loudly")]

use terminalwire_protocol::secure::{
    Channel, MAX_PIECE, MAX_SEALED_LEN, NOISE_PARAMS, Responder, SecureError, StaticKey,
};

/// A handshake with snow as the client (an empty offer: ChaChaPoly), whose
/// last message carries `last_payload`.
fn snow_client_handshake(
    last_payload: &[u8],
) -> (
    Result<(Vec<u8>, Channel), SecureError>,
    snow::TransportState,
) {
    let server = StaticKey::generate().unwrap();
    let params: snow::params::NoiseParams = NOISE_PARAMS.parse().unwrap();
    let keys = snow::Builder::new(params.clone())
        .generate_keypair()
        .unwrap();
    let mut client = snow::Builder::new(params)
        .local_private_key(&keys.private)
        .unwrap()
        .prologue(terminalwire_protocol::SUBPROTOCOL.as_bytes())
        .unwrap()
        .build_initiator()
        .unwrap();
    let mut message = vec![0u8; 2048];
    let len = client.write_message(&[], &mut message).unwrap();
    let (responder, second) = Responder::respond(&server, &message[..len]).unwrap();
    let mut payload = vec![0u8; 2048];
    client.read_message(&second, &mut payload).unwrap();
    let len = client.write_message(last_payload, &mut message).unwrap();
    let finished = responder.finish(&message[..len]);
    (finished, client.into_transport_mode().unwrap())
}

/// One piece of a sealed message: its length, then the Noise message of
/// `flag` and `part`.
fn piece(client: &mut snow::TransportState, flag: u8, part: &[u8], into: &mut Vec<u8>) {
    let mut plain = vec![flag];
    plain.extend_from_slice(part);
    let mut sealed = vec![0u8; plain.len() + 16];
    let len = client.write_message(&plain, &mut sealed).unwrap();
    into.extend_from_slice(&u16::try_from(len).unwrap().to_be_bytes());
    into.extend_from_slice(&sealed[..len]);
}

#[test]
fn the_clients_last_handshake_message_must_carry_no_payload() {
    let (refused, _) = snow_client_handshake(b"unexpected payload");
    assert!(
        matches!(refused, Err(SecureError::Handshake(_))),
        "{:?}",
        refused.map(|(device, _)| device)
    );
    let (accepted, _) = snow_client_handshake(&[]);
    assert!(accepted.is_ok());
}

/// Empty pieces before the last made a message of any length that opened
/// into a tiny frame; a frame is now cut one way only, and a message is at
/// most `MAX_SEALED_LEN` bytes.
#[test]
fn a_frame_cut_other_than_into_full_pieces_is_refused() {
    // Empty pieces, past the longest message.
    let (finished, mut client) = snow_client_handshake(&[]);
    let (_, mut opener) = finished.unwrap().1.split();
    let mut message = Vec::new();
    while message.len() <= MAX_SEALED_LEN {
        piece(&mut client, 0, &[], &mut message);
    }
    piece(&mut client, 1, b"x", &mut message);
    let opened = opener.open(&message);
    assert!(
        matches!(opened, Err(SecureError::TooLarge { .. })),
        "{} bytes: {opened:?}",
        message.len()
    );

    // One short piece, then the last: a message of a legal length.
    let (finished, mut client) = snow_client_handshake(&[]);
    let (_, mut opener) = finished.unwrap().1.split();
    let mut message = Vec::new();
    piece(&mut client, 0, b"ab", &mut message);
    piece(&mut client, 1, b"c", &mut message);
    assert!(matches!(opener.open(&message), Err(SecureError::Tampered)));

    // Full pieces before the last open.
    let (finished, mut client) = snow_client_handshake(&[]);
    let (_, mut opener) = finished.unwrap().1.split();
    let mut message = Vec::new();
    piece(&mut client, 0, &vec![7; MAX_PIECE], &mut message);
    piece(&mut client, 1, b"c", &mut message);
    let opened = opener.open(&message).unwrap();
    assert_eq!(opened.len(), MAX_PIECE + 1);
}
