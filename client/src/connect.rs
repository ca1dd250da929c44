//! The server URL and the WebSocket connection.

use std::time::Duration;

use terminalwire_protocol::{MAX_FRAME_LEN, SUBPROTOCOL};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::http::header::{SEC_WEBSOCKET_PROTOCOL, USER_AGENT};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{self, error::ProtocolError};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use url::Url;

use crate::error::ClientError;

/// A server endpoint, checked and mapped to a WebSocket URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// The WebSocket URL (`ws://` or `wss://`).
    pub url: Url,
    /// The authority (host, plus port when not the scheme's default).
    pub authority: String,
}

impl Target {
    /// Parses a URL as typed by the user: `ws://` as is, `http://` mapped to
    /// `ws://`; `wss://`/`https://` are refused until TLS support lands.
    pub fn parse(raw: &str) -> Result<Target, ClientError> {
        let bad = |reason: &str| ClientError::BadUrl {
            url: raw.to_owned(),
            reason: reason.to_owned(),
        };
        let mut url = Url::parse(raw).map_err(|error| bad(&error.to_string()))?;
        let scheme = match url.scheme() {
            "ws" | "http" => "ws",
            "wss" | "https" => {
                return Err(bad(
                    "TLS (wss:// and https://) is not supported by this client build yet; use ws:// or http://",
                ));
            }
            _ => return Err(bad("expected a ws:// or http:// URL")),
        };
        if url.scheme() != scheme {
            // `Url::set_scheme` refuses special-to-special changes it deems invalid;
            // http → ws keeps host, port and path, so re-parse the string.
            let rest = &url.as_str()[url.scheme().len()..];
            url =
                Url::parse(&format!("{scheme}{rest}")).map_err(|error| bad(&error.to_string()))?;
        }
        if !url.username().is_empty() || url.password().is_some() {
            return Err(bad("credentials in the URL are not supported"));
        }
        url.set_fragment(None);
        let authority = terminalwire_policy::Authority::from_url(&url)
            .map_err(|error| bad(&error.to_string()))?
            .to_string();
        Ok(Target { url, authority })
    }
}

/// The client's WebSocket.
pub type Socket = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// WebSocket limits matching the protocol's.
pub fn websocket_config() -> WebSocketConfig {
    WebSocketConfig::default()
        .max_message_size(Some(MAX_FRAME_LEN))
        .max_frame_size(Some(MAX_FRAME_LEN))
}

/// Opens the WebSocket, offering the protocol's subprotocol, within `timeout`.
pub async fn connect(target: &Target, timeout: Duration) -> Result<Socket, ClientError> {
    let unavailable = |reason: String| ClientError::Unavailable {
        target: target.url.as_str().to_owned(),
        reason,
    };
    let mut request = target
        .url
        .as_str()
        .into_client_request()
        .map_err(|error| unavailable(error.to_string()))?;
    let headers = request.headers_mut();
    headers.insert(
        SEC_WEBSOCKET_PROTOCOL,
        HeaderValue::from_static(SUBPROTOCOL),
    );
    headers.insert(
        USER_AGENT,
        HeaderValue::from_static(concat!("terminalwire/", env!("CARGO_PKG_VERSION"))),
    );
    let connecting =
        tokio_tungstenite::connect_async_with_config(request, Some(websocket_config()), true);
    let (socket, response) = match tokio::time::timeout(timeout, connecting).await {
        Err(_) => return Err(unavailable(format!("timed out after {timeout:?}"))),
        Ok(Err(error)) => return Err(unavailable(describe(error))),
        Ok(Ok(connected)) => connected,
    };
    let echoed = response
        .headers()
        .get(SEC_WEBSOCKET_PROTOCOL)
        .and_then(|value| value.to_str().ok());
    if echoed != Some(SUBPROTOCOL) {
        return Err(unavailable(format!(
            "the server does not speak the terminalwire protocol (it did not accept the `{SUBPROTOCOL}` subprotocol)"
        )));
    }
    Ok(socket)
}

fn describe(error: tungstenite::Error) -> String {
    match error {
        tungstenite::Error::Io(error) => error.to_string(),
        tungstenite::Error::Http(response) => {
            let status = response.status();
            let body = response
                .body()
                .as_deref()
                .and_then(|body| std::str::from_utf8(body).ok())
                .and_then(|body| body.lines().next())
                .filter(|line| !line.trim().is_empty())
                .map(|line| format!(": {}", line.chars().take(200).collect::<String>()))
                .unwrap_or_default();
            format!("the server refused the WebSocket upgrade with HTTP {status}{body}")
        }
        tungstenite::Error::Protocol(ProtocolError::SecWebSocketSubProtocolError(_)) => format!(
            "the server does not speak the terminalwire protocol (it did not accept the `{SUBPROTOCOL}` subprotocol)"
        ),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn http_urls_map_to_websocket_urls() {
        let target = Target::parse("http://127.0.0.1:3000/terminal?x=1#frag").unwrap();
        assert_eq!(target.url.as_str(), "ws://127.0.0.1:3000/terminal?x=1");
        assert_eq!(target.authority, "127.0.0.1:3000");
        let target = Target::parse("ws://Example.COM:80/t").unwrap();
        assert_eq!(target.authority, "example.com");
    }

    #[test]
    fn unusable_urls_are_refused() {
        for url in [
            "ftp://x/",
            "not a url",
            "wss://secure.example/",
            "ws://user:pw@h/",
            "file:///etc/passwd",
        ] {
            assert!(Target::parse(url).is_err(), "{url} accepted");
        }
    }
}
