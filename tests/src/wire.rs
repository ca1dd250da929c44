//! A client speaking the protocol by hand, for resume tests: the real
//! client's secure handshake and hello, then frames one at a time.

#![allow(clippy::unwrap_used, reason = "test helpers fail loudly")]

use std::time::Duration;

use futures_util::{Sink, SinkExt, Stream, StreamExt};
use terminalwire_client::connect::{self, Target};
use terminalwire_client::secure::{self, ServerPin};
use terminalwire_protocol::codec;
use terminalwire_protocol::frame::{ClientFrame, Resume, ServerFrame};
use terminalwire_protocol::secure::StaticKey;
use tokio_tungstenite::tungstenite::{self, Message};

/// A secured WebSocket.
pub trait Conn:
    Sink<Message, Error = tungstenite::Error>
    + Stream<Item = Result<Message, tungstenite::Error>>
    + Unpin
    + Send
{
}
impl<T> Conn for T where
    T: Sink<Message, Error = tungstenite::Error>
        + Stream<Item = Result<Message, tungstenite::Error>>
        + Unpin
        + Send
{
}

/// Connects to `url` as device `device` and runs the secure handshake.
pub async fn secure_connect(url: &str, device: &StaticKey) -> impl Conn {
    let target = Target::parse(url).unwrap();
    let socket = connect::connect(&target, Duration::from_secs(10))
        .await
        .unwrap();
    let (socket, _) = secure::handshake(
        socket,
        device,
        &ServerPin::FirstContact,
        &target.authority,
        Duration::from_secs(10),
    )
    .await
    .unwrap();
    socket
}

/// Sends one frame.
pub async fn send_frame(socket: &mut impl Conn, frame: &ClientFrame) {
    socket
        .send(Message::Binary(codec::encode(frame).into()))
        .await
        .unwrap();
}

/// The next frame from the server, skipping pings.
pub async fn next_frame(socket: &mut impl Conn) -> ServerFrame {
    loop {
        let Message::Binary(bytes) = socket.next().await.unwrap().unwrap() else {
            continue;
        };
        return codec::decode::<ServerFrame>(&bytes).unwrap();
    }
}

/// Opens a resumable session; returns the connection, id and first token.
pub async fn open_resumable(
    url: &str,
    device: &StaticKey,
    args: &[&str],
) -> (impl Conn, String, Vec<u8>) {
    let target = Target::parse(url).unwrap();
    let mut socket = secure_connect(url, device).await;
    let mut hello = terminalwire_client::facts::hello(
        &target,
        "test".into(),
        args.iter().map(|arg| (*arg).to_owned()).collect(),
    )
    .unwrap();
    hello.capabilities.push("resume".into());
    send_frame(&mut socket, &ClientFrame::Hello(hello)).await;
    loop {
        if let ServerFrame::Welcome(welcome) = next_frame(&mut socket).await {
            let ticket = welcome.resume.expect("the server offers resuming");
            return (socket, welcome.session_id, ticket.token.into_vec());
        }
    }
}

/// `resume` with `received: 0`.
pub fn resume_frame(session_id: &str, token: &[u8]) -> ClientFrame {
    ClientFrame::Resume(Resume {
        session_id: session_id.to_owned(),
        token: token.to_vec().into(),
        received: 0,
    })
}

/// Sends `resume` as `device` on a new connection; returns the answer.
pub async fn try_resume(
    url: &str,
    device: &StaticKey,
    session_id: &str,
    token: &[u8],
) -> ServerFrame {
    let mut socket = secure_connect(url, device).await;
    send_frame(&mut socket, &resume_frame(session_id, token)).await;
    next_frame(&mut socket).await
}
