//! The server SDK's whole session engine (`Terminal::serve`) against a
//! client that does the real secure handshake and a valid hello, then sends
//! arbitrary frames.
//!
//! Input: one flags byte (bit 0: the hello asks for `resume`; bit 1: it
//! offers `cancel`), then frames, each a big-endian `u16` length and that
//! many bytes (the last one takes what is left), sent sealed one after the
//! other while everything the server sends is read. A frame that decodes as
//! a response is sent as the answer to the server's next request (its id
//! replaced), once that request came. The app's command makes
//! one request of each kind a command makes (stdin, files, folders, env,
//! browser, terminal) and writes output past its window, ignoring every
//! answer's error. Runs on tokio's paused clock: time moves only while
//! everything waits, so a session that waits for the client ends at its
//! idle time-out at once.
//!
//! Checks:
//! - no panic (the SDK's own, or the app's command over what a client said);
//! - the session ends within 10 minutes of the paused clock after the
//!   client goes away (its time-outs here are a few seconds to a minute).

#![no_main]

mod session_input;

use std::time::Duration;

use futures_util::{SinkExt, StreamExt, future};
use libfuzzer_sys::fuzz_target;
use terminalwire_client::secure::{self, ServerPin};
use terminalwire_protocol::codec;
use terminalwire_protocol::frame::{
    ClientFrame, ColorLevel, Hello, Program, ServerFrame, Software, StreamFacts, StreamKind,
    TerminalFacts,
};
use terminalwire_protocol::secure::StaticKey;
use terminalwire_server::transport::{
    FrameReader, FrameWriter, Inbound, Transport, TransportError,
};
use terminalwire_server::{Config, Context, Terminal};
use tokio::io::DuplexStream;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::Role;

fuzz_target!(|data: &[u8]| {
    let Some((flags, frames)) = session_input::parse(data) else {
        return;
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .start_paused(true)
        .build()
        .unwrap();
    runtime.block_on(session(flags, frames));
});

async fn session(flags: u8, frames: Vec<Vec<u8>>) {
    let (client_io, server_io) = tokio::io::duplex(64 * 1024);
    let client_ws = WebSocketStream::from_raw_socket(client_io, Role::Client, None).await;
    let server_ws = WebSocketStream::from_raw_socket(server_io, Role::Server, None).await;
    // Short keeps, so that a session the client leaves resumable or
    // detached ends soon after on the paused clock.
    let config = Config {
        resume_grace: Duration::from_secs(5),
        detach_keep: Duration::from_secs(10),
        ..Config::default()
    };
    let terminal = Terminal::with_config(command, config);
    let server = tokio::spawn(terminal.serve(WsTransport(server_ws)));
    client(client_ws, flags, frames).await;
    if tokio::time::timeout(Duration::from_secs(600), server)
        .await
        .is_err()
    {
        panic!("the session did not end within 10 minutes of the client going away");
    }
}

/// The client: the secure handshake and a hello, then the frames, reading
/// whatever the server sends meanwhile; then it goes away.
async fn client(ws: WebSocketStream<DuplexStream>, flags: u8, frames: Vec<Vec<u8>>) {
    let device = StaticKey::generate().unwrap();
    let handshake = secure::handshake(
        ws,
        &device,
        &ServerPin::FirstContact,
        "fuzz",
        Duration::from_secs(10),
    );
    let Ok((socket, _)) = handshake.await else {
        return;
    };
    let (mut sink, mut stream) = socket.split();
    let hello = codec::encode(&ClientFrame::Hello(hello(flags)));
    if sink.send(Message::Binary(hello.into())).await.is_err() {
        return;
    }
    // Whatever the server sends is read, so that it never waits on a full
    // pipe for a client that only sends; its requests' ids are passed on.
    let (requested, mut requests) = tokio::sync::mpsc::unbounded_channel();
    let reading = tokio::spawn(async move {
        while let Some(Ok(message)) = stream.next().await {
            if let Message::Binary(bytes) = message
                && let Ok(ServerFrame::Request(request)) = codec::decode::<ServerFrame>(&bytes)
            {
                let _ = requested.send(request.id);
            }
        }
    });
    for frame in frames {
        // A response answers the server's next request (waiting for it, on
        // the paused clock), whatever id the input gave it: the fuzzer
        // cannot know the ids, and an answer to an id never asked is only
        // ever the same violation.
        let frame = match codec::decode::<ClientFrame>(&frame) {
            Ok(ClientFrame::Response(mut response)) => {
                match tokio::time::timeout(Duration::from_secs(5), requests.recv()).await {
                    Ok(Some(id)) => {
                        response.id = id;
                        codec::encode(&ClientFrame::Response(response))
                    }
                    _ => frame,
                }
            }
            _ => frame,
        };
        if sink.send(Message::Binary(frame.into())).await.is_err() {
            break;
        }
    }
    let _ = sink.close().await;
    drop(sink);
    reading.abort();
}

fn hello(flags: u8) -> Hello {
    let stream = StreamFacts {
        kind: StreamKind::Tty,
        size: None,
        color: ColorLevel::None,
    };
    let mut capabilities: Vec<String> = ["stdout", "stderr", "exit", "stdin.line"]
        .map(String::from)
        .into();
    if flags & 1 == 1 {
        capabilities.push(terminalwire_protocol::resume::CAPABILITY.into());
    }
    if flags & 2 == 2 {
        capabilities.push(terminalwire_protocol::frame::CANCEL_CAPABILITY.into());
    }
    Hello {
        versions: terminalwire_protocol::SUPPORTED_VERSIONS,
        client: Software {
            name: "fuzz".into(),
            version: "0".into(),
        },
        os: "linux".into(),
        os_version: None,
        arch: "x86_64".into(),
        authority: "fuzz.example".into(),
        storage: Some("~/.terminalwire/authorities/fuzz.example/storage".into()),
        origin: None,
        program: Program {
            name: "fuzz".into(),
            args: vec!["x".into()],
        },
        terminal: TerminalFacts {
            stdin: stream.clone(),
            stdout: stream.clone(),
            stderr: stream,
            term: Some("xterm".into()),
        },
        capabilities,
        window: terminalwire_protocol::DEFAULT_WINDOW,
        max_chunk: terminalwire_protocol::DEFAULT_MAX_CHUNK,
    }
}

/// One request of each kind, answers ignored, and output past the window.
async fn command(ctx: Context) -> anyhow::Result<()> {
    let _ = ctx.stdout().println("hello").await;
    let _ = ctx.read_line(Some("Name: ")).await;
    let _ = ctx.stdin().read_password("Password: ").await;
    let _ = ctx.stdin().read_chunk(16).await;
    let _ = ctx.file().read("~/notes.txt").await;
    let _ = ctx.file().write("~/out.txt", b"x").await;
    let _ = ctx.file().exists("~/notes.txt").await;
    let _ = ctx.file().metadata("~/notes.txt").await;
    if let Ok(mut writer) = ctx.file().writer("~/big.bin").await {
        let _ = writer.write(&[7; 4096]).await;
        let _ = writer.commit().await;
    }
    let _ = ctx.dir().list("~").await;
    let _ = ctx.dir().create_all("~/a/b").await;
    let _ = ctx.env().get("HOME").await;
    let _ = ctx.browser().open("https://fuzz.example/").await;
    let _ = ctx.set_raw_mode(true).await;
    let _ = ctx.read_key().await;
    let _ = ctx.set_raw_mode(false).await;
    let chunk = vec![b'x'; 64 * 1024];
    for _ in 0..24 {
        if ctx.stdout().write_all(&chunk).await.is_err() {
            break;
        }
    }
    Ok(())
}

/// A tungstenite WebSocket as the SDK's transport.
struct WsTransport(WebSocketStream<DuplexStream>);

impl Transport for WsTransport {
    fn split(self) -> (FrameWriter, FrameReader) {
        let (sink, stream) = self.0.split();
        let writer = sink
            .sink_map_err(TransportError::new)
            .with(|frame: bytes::Bytes| future::ready(Ok(Message::Binary(frame))));
        let reader = stream.filter_map(|message| {
            future::ready(match message {
                Ok(Message::Binary(bytes)) => Some(Ok(Inbound::Frame(bytes.into()))),
                Ok(Message::Ping(_) | Message::Pong(_)) => Some(Ok(Inbound::Heartbeat)),
                Ok(Message::Text(_)) => Some(Ok(Inbound::Unexpected("a text message"))),
                Ok(Message::Frame(_)) => Some(Ok(Inbound::Unexpected("a raw frame"))),
                Ok(Message::Close(_)) => None,
                Err(error) => Some(Err(TransportError::new(error))),
            })
        });
        (Box::pin(writer), Box::pin(reader))
    }
}
