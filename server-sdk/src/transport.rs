//! The transport a session runs over: a stream of inbound byte frames and a sink
//! of outbound ones.
//!
//! The SDK ships the axum WebSocket transport ([`AxumTransport`]); tests and
//! other servers implement [`Transport`] for their own connections (any
//! WebSocket implementation, an in-memory pipe, ...).

use std::pin::Pin;

use axum::extract::ws::{Message, WebSocket};
use bytes::Bytes;
use futures_util::{Sink, SinkExt, Stream, StreamExt};

/// A transport failure (connection reset, malformed WebSocket framing, ...).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct TransportError(pub Box<dyn std::error::Error + Send + Sync>);

impl TransportError {
    /// Wraps any error.
    pub fn new(error: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> Self {
        TransportError(error.into())
    }
}

/// What the peer sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Inbound {
    /// One encoded frame (a binary WebSocket message).
    Frame(Vec<u8>),
    /// A sign of life that carries no frame (a WebSocket ping or pong).
    Heartbeat,
    /// A message that cannot carry a frame (e.g. WebSocket text): a protocol violation.
    Unexpected(&'static str),
}

/// Inbound half of a transport. Ends when the peer closes.
pub type FrameReader = Pin<Box<dyn Stream<Item = Result<Inbound, TransportError>> + Send>>;

/// Outbound half of a transport: each item is one encoded frame. Closing it
/// closes the connection. Frames are shared buffers: the session keeps the
/// same bytes for replay after a reconnection without copying them.
pub type FrameWriter = Pin<Box<dyn Sink<Bytes, Error = TransportError> + Send>>;

/// A connection that carries frames.
pub trait Transport: Send + 'static {
    /// Splits into independently usable halves.
    fn split(self) -> (FrameWriter, FrameReader);
}

/// An axum WebSocket as a transport.
#[derive(Debug)]
pub struct AxumTransport(pub WebSocket);

impl Transport for AxumTransport {
    fn split(self) -> (FrameWriter, FrameReader) {
        let (sink, stream) = self.0.split();
        let writer = sink
            .sink_map_err(TransportError::new)
            .with(|frame: Bytes| async move { Ok::<_, TransportError>(Message::Binary(frame)) });
        let reader = stream.filter_map(|message| async move {
            match message {
                Ok(Message::Binary(bytes)) => Some(Ok(Inbound::Frame(bytes.into()))),
                Ok(Message::Ping(_) | Message::Pong(_)) => Some(Ok(Inbound::Heartbeat)),
                Ok(Message::Text(_)) => Some(Ok(Inbound::Unexpected("a text message"))),
                Ok(Message::Close(_)) => None,
                Err(error) => Some(Err(TransportError::new(error))),
            }
        });
        (Box::pin(writer), Box::pin(reader))
    }
}
