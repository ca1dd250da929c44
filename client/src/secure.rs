//! The client's end of the secure channel: the Noise handshake over the
//! WebSocket, the server-key pin (trust on first use, refuse on change), the
//! device key, and a socket that seals and opens every frame.

use std::io;
use std::path::Path;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use futures_util::{Sink, SinkExt, Stream, StreamExt};
use terminalwire_protocol::secure::{self, Initiator, Opener, Sealer, SecureError, StaticKey};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::{self, Message};

use crate::error::ClientError;

/// A WebSocket whose binary messages are sealed frames.
pub struct SecureSocket<S> {
    inner: WebSocketStream<S>,
    sealer: Sealer,
    opener: Opener,
}

impl<S> std::fmt::Debug for SecureSocket<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SecureSocket").finish_non_exhaustive()
    }
}

/// A sealed frame that did not open: reported as a protocol error.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Unsealed(pub SecureError);

fn sealed_error(error: SecureError) -> tungstenite::Error {
    tungstenite::Error::Io(io::Error::new(io::ErrorKind::InvalidData, Unsealed(error)))
}

impl<S: AsyncRead + AsyncWrite + Unpin> Stream for SecureSocket<S> {
    type Item = Result<Message, tungstenite::Error>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        match this.inner.poll_next_unpin(cx) {
            Poll::Ready(Some(Ok(Message::Binary(sealed)))) => Poll::Ready(Some(
                this.opener
                    .open_unmoved(&sealed)
                    // The frame is taken where it was decrypted, not moved.
                    .map(|opened| {
                        Message::Binary(
                            tungstenite::Bytes::from(opened.buffer).slice(opened.start..),
                        )
                    })
                    .map_err(sealed_error),
            )),
            other => other,
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> Sink<Message> for SecureSocket<S> {
    type Error = tungstenite::Error;

    fn poll_ready(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.get_mut().inner.poll_ready_unpin(cx)
    }

    fn start_send(self: Pin<&mut Self>, item: Message) -> Result<(), Self::Error> {
        let this = self.get_mut();
        let item = match item {
            Message::Binary(frame) => {
                Message::Binary(this.sealer.seal_message(&frame).map_err(sealed_error)?)
            }
            other => other,
        };
        this.inner.start_send_unpin(item)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.get_mut().inner.poll_flush_unpin(cx)
    }

    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.get_mut().inner.poll_close_unpin(cx)
    }
}

/// What the client knows of the server's identity before connecting.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServerPin {
    /// First contact: accept and remember the key the server shows.
    FirstContact,
    /// The fingerprint the server must show.
    Pinned(String),
}

/// Runs the handshake as the initiator with `device`; checks the server's
/// key against `pin`. Returns the socket and the server's fingerprint.
pub async fn handshake<S>(
    mut socket: WebSocketStream<S>,
    device: &StaticKey,
    pin: &ServerPin,
    authority: &str,
    timeout: Duration,
) -> Result<(SecureSocket<S>, String), ClientError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let exchange = async {
        let failed = |error: SecureError| ClientError::Protocol(error.to_string());
        let (mut initiator, first) = Initiator::start(device).map_err(failed)?;
        socket
            .send(Message::Binary(first.into()))
            .await
            .map_err(lost)?;
        let second = next_binary(&mut socket).await?;
        let server_key = initiator.read_response(&second).map_err(failed)?;
        let presented = secure::fingerprint(&server_key);
        if let ServerPin::Pinned(pinned) = pin
            && *pinned != presented
        {
            return Err(ClientError::IdentityChanged {
                authority: authority.to_owned(),
                pinned: pinned.clone(),
                presented,
            });
        }
        let (third, channel) = initiator.finish().map_err(failed)?;
        socket
            .send(Message::Binary(third.into()))
            .await
            .map_err(lost)?;
        Ok((channel, presented))
    };
    let (channel, presented) = match tokio::time::timeout(timeout, exchange).await {
        Ok(result) => result?,
        Err(_) => {
            return Err(ClientError::ConnectionLost(format!(
                "the server did not complete the secure handshake within {timeout:?}"
            )));
        }
    };
    if !secure::ENCRYPTED {
        // A bench-only build (`terminalwire-protocol/insecure-plaintext-bench`):
        // say so once per process, whatever the command prints.
        static WARNED: std::sync::Once = std::sync::Once::new();
        WARNED.call_once(|| {
            eprintln!(
                "terminalwire: built with insecure-plaintext-bench: NO end-to-end encryption"
            );
        });
    }
    let (sealer, opener) = channel.split();
    Ok((
        SecureSocket {
            inner: socket,
            sealer,
            opener,
        },
        presented,
    ))
}

async fn next_binary<S>(socket: &mut WebSocketStream<S>) -> Result<Vec<u8>, ClientError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    loop {
        match socket.next().await {
            None | Some(Ok(Message::Close(_))) => {
                return Err(ClientError::ConnectionLost(
                    "the server closed the connection during the secure handshake".into(),
                ));
            }
            Some(Err(error)) => return Err(lost(error)),
            Some(Ok(Message::Binary(bytes))) => return Ok(bytes.into()),
            Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => {}
            Some(Ok(Message::Text(_))) => {
                return Err(ClientError::Protocol(
                    "the server sent text during the secure handshake".into(),
                ));
            }
        }
    }
}

fn lost(error: tungstenite::Error) -> ClientError {
    ClientError::ConnectionLost(format!("the connection to the server was lost: {error}"))
}

/// Most bytes a device key or pinned identity file may hold (they take a
/// few hundred; the rest is room for comments).
const MAX_IDENTITY_FILE: u64 = 64 * 1024;

/// Loads the device key at `path`, creating it (0600, atomically) on first
/// contact with the authority.
pub fn device_key(path: &Path) -> Result<StaticKey, ClientError> {
    let config = |message: String| ClientError::Config(message);
    match terminalwire_policy::read_own_file(path, MAX_IDENTITY_FILE) {
        Ok(Some(text)) => StaticKey::from_file_text(&text)
            .map_err(|error| config(format!("{}: {error}", path.display()))),
        Ok(None) => {
            let key = StaticKey::generate().map_err(|error| config(error.to_string()))?;
            // Another first run may make one at the same moment: the key on
            // disk is the device's, whichever run wrote it.
            let written =
                terminalwire_policy::write_private_new(path, key.to_file_text().as_bytes())
                    .map_err(|error| config(format!("cannot write {}: {error}", path.display())))?;
            if written { Ok(key) } else { device_key(path) }
        }
        Err(error) => Err(config(format!("cannot read {}: {error}", path.display()))),
    }
}

/// The pinned server fingerprint at `path`, if any.
pub fn load_pin(path: &Path) -> Result<ServerPin, ClientError> {
    match terminalwire_policy::read_own_file(path, MAX_IDENTITY_FILE) {
        Ok(Some(text)) => {
            let pinned = text
                .lines()
                .map(str::trim)
                .find(|line| !line.is_empty() && !line.starts_with('#'))
                .unwrap_or_default();
            if pinned.starts_with("SHA256:") {
                Ok(ServerPin::Pinned(pinned.to_owned()))
            } else {
                // The file is `<authority's folder>/server.pin`.
                let authority = path
                    .parent()
                    .and_then(Path::file_name)
                    .map_or_else(|| "AUTHORITY".into(), |name| name.to_string_lossy());
                Err(ClientError::Config(format!(
                    "{}: expected a SHA256:... fingerprint; pin the server again with \
                     `terminalwire authority trust {authority} --fingerprint SHA256:...`",
                    path.display()
                )))
            }
        }
        Ok(None) => Ok(ServerPin::FirstContact),
        Err(error) => Err(ClientError::Config(format!(
            "cannot read {}: {error}",
            path.display()
        ))),
    }
}

/// The pin file's text for `fingerprint`.
fn pin_text(fingerprint: &str) -> String {
    format!(
        "# The server identity terminalwire pinned for this authority.\n\
         # Change it only with `terminalwire authority trust`.\n{fingerprint}\n"
    )
}

/// Pins `fingerprint` for the authority (atomic write, 0600), replacing
/// any pin (`terminalwire authority trust`).
pub fn save_pin(path: &Path, fingerprint: &str) -> io::Result<()> {
    terminalwire_policy::write_private_atomically(path, pin_text(fingerprint).as_bytes())
}

/// Pins `presented` at first contact, unless a pin appeared meanwhile (a
/// run started at the same time pinned first): that pin is the one kept,
/// and a server showing another identity is refused as a changed one.
pub fn pin_first_contact(path: &Path, authority: &str, presented: &str) -> Result<(), ClientError> {
    let written = terminalwire_policy::write_private_new(path, pin_text(presented).as_bytes())
        .map_err(|error| {
            ClientError::Config(format!(
                "cannot pin the server identity in {}: {error}",
                path.display()
            ))
        })?;
    if written {
        return Ok(());
    }
    match load_pin(path)? {
        ServerPin::Pinned(pinned) if pinned != presented => Err(ClientError::IdentityChanged {
            authority: authority.to_owned(),
            pinned,
            presented: presented.to_owned(),
        }),
        _ => Ok(()),
    }
}
