//! Idle sessions: thousands of connections held open against one server
//! process by lightweight clients in this process, to measure the server's
//! memory per session.

use std::time::Duration;

use anyhow::{Context as _, bail};
use futures_util::{SinkExt, StreamExt};
use terminalwire_client::connect::{self, Target};
use terminalwire_client::secure::{self, ServerPin};
use terminalwire_protocol::codec;
use terminalwire_protocol::frame::{ClientFrame, ServerFrame, StreamId};
use terminalwire_protocol::secure::StaticKey;
use tokio_tungstenite::tungstenite::Message;

/// Connections being opened at once.
const OPENING: usize = 64;
/// Time an open or handshake may take.
const TIMEOUT: Duration = Duration::from_secs(30);

/// A held connection (a terminalwire session or a raw WebSocket); closed
/// when dropped.
pub(crate) struct Held {
    _connection: Box<dyn std::any::Any + Send>,
}

/// Opens a terminalwire session on `url` running the bench app's `idle`
/// command, with the real client's secure handshake (device key `device`)
/// and hello, and returns once the command has answered `ready`.
async fn open_session(url: &str, device: &StaticKey) -> anyhow::Result<Held> {
    let target = Target::parse(url)?;
    let socket = connect::connect(&target, TIMEOUT).await?;
    let (mut socket, _) = secure::handshake(
        socket,
        device,
        &ServerPin::FirstContact,
        &target.authority,
        TIMEOUT,
    )
    .await?;
    let mut hello = terminalwire_client::facts::hello(
        &target,
        "terminalwire-bench".into(),
        vec!["idle".into()],
    )?;
    // Resumable, like the real client's sessions.
    hello
        .capabilities
        .push(terminalwire_protocol::resume::CAPABILITY.into());
    socket
        .send(Message::Binary(
            codec::encode(&ClientFrame::Hello(hello)).into(),
        ))
        .await?;
    let mut welcomed = false;
    loop {
        let message = socket
            .next()
            .await
            .context("the server closed the session")??;
        let Message::Binary(bytes) = message else {
            continue;
        };
        let frame = codec::decode::<ServerFrame>(&bytes)
            .with_context(|| format!("decoding {:02x?}", &bytes[..bytes.len().min(64)]))?;
        match frame {
            ServerFrame::Welcome(_) => welcomed = true,
            // Acknowledgements of nothing yet: harmless.
            ServerFrame::Ack(_) => {}
            ServerFrame::Data(data) if welcomed && data.sid == StreamId::STDOUT => {
                if data.bytes.as_ref() == b"ready\n" {
                    return Ok(Held {
                        _connection: Box::new(socket),
                    });
                }
                bail!(
                    "unexpected output {:?}",
                    String::from_utf8_lossy(&data.bytes)
                );
            }
            other => bail!("unexpected frame {other:?}"),
        }
    }
}

/// Opens a raw WebSocket on the raw server's `/idle` (`base` is `ws://ADDR/`).
async fn open_raw(base: &str) -> anyhow::Result<Held> {
    let url = format!("{}/idle", base.trim_end_matches('/'));
    let (socket, _) = tokio_tungstenite::connect_async(url).await?;
    Ok(Held {
        _connection: Box::new(socket),
    })
}

/// Opens `n` connections, terminalwire sessions (`raw` false) or raw
/// WebSockets, and returns them all once every one is open.
pub(crate) async fn open(url: &str, n: usize, raw: bool) -> anyhow::Result<Vec<Held>> {
    let device = StaticKey::generate()?;
    let device = &device;
    let opening = futures_util::stream::iter(0..n).map(|_| async move {
        let open = async {
            if raw {
                open_raw(url).await
            } else {
                open_session(url, device).await
            }
        };
        tokio::time::timeout(TIMEOUT, open)
            .await
            .context("opening a connection timed out")?
    });
    let mut opening = opening.buffer_unordered(OPENING);
    let mut held = Vec::with_capacity(n);
    while let Some(connection) = opening.next().await {
        held.push(connection?);
    }
    Ok(held)
}
