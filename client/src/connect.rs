//! The server URL and the WebSocket connection, plain or over TLS.
//!
//! # TLS
//!
//! `wss://` (and `https://`, mapped to it) connects with rustls, using the
//! *aws-lc-rs* crypto provider explicitly (never a process-wide default). The
//! server's certificate must chain to a trusted certificate authority:
//!
//! - the platform's trusted roots, loaded with `rustls-native-certs` (on Unix
//!   the system bundle, honouring `SSL_CERT_FILE` and `SSL_CERT_DIR`; the
//!   system keychain or store on macOS and Windows);
//! - only when the platform has none (e.g. a minimal container), the Mozilla
//!   roots compiled into the client (`webpki-roots`);
//! - plus the certificates of `--ca-cert FILE` (env `TERMINALWIRE_CA_CERT`): a
//!   PEM file of one or more private CA (or self-signed server) certificates.
//!
//! The `--ca-cert` file is read only for TLS connections; an unreadable or
//! invalid one is a configuration error (exit 65). A certificate the client
//! does not trust, or one for another name, is reported in one line with
//! exit 69 (cannot connect).

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use rustls::{CertificateError, ClientConfig, RootCertStore};
use terminalwire_protocol::SUBPROTOCOL;
use terminalwire_protocol::secure::MAX_SEALED_LEN;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::http::header::{SEC_WEBSOCKET_PROTOCOL, USER_AGENT};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{self, error::ProtocolError};
use tokio_tungstenite::{Connector, MaybeTlsStream, WebSocketStream};
use url::Url;

use crate::error::ClientError;

/// A server endpoint, checked and mapped to a WebSocket URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// The WebSocket URL (`ws://` or `wss://`).
    pub url: Url,
    /// The authority (host, plus port when neither 80 nor 443; for a
    /// Unix socket, `local-` and a digest of its path).
    pub authority: String,
    /// For `unix:PATH`: the socket to connect to (the URL is then a stand-in
    /// naming the authority).
    pub unix: Option<std::path::PathBuf>,
}

impl Target {
    /// Parses a URL as typed by the user: `ws://` and `wss://` as they are,
    /// `http://` mapped to `ws://` and `https://` to `wss://`.
    pub fn parse(raw: &str) -> Result<Target, ClientError> {
        let bad = |reason: &str| ClientError::BadUrl {
            url: raw.to_owned(),
            reason: reason.to_owned(),
        };
        if let Some(path) = raw.strip_prefix("unix:") {
            return Target::unix(raw, path);
        }
        if raw.trim().is_empty() {
            return Err(bad(
                "it is empty: give the app's URL, e.g. ws://127.0.0.1:3000/terminal",
            ));
        }
        if let Some(meant) = mistyped_scheme(raw) {
            return Err(bad(&format!(
                "the scheme needs `://`: did you mean {}?",
                crate::inert::inert(&meant)
            )));
        }
        if !raw.contains("://") {
            return Err(bad(&format!(
                "a URL starts with ws://, wss://, http://, https:// or unix: \
                 (did you mean https://{raw}, or ws://{raw} on your own machine?)"
            )));
        }
        if terminalwire_policy::authority::has_no_host(raw) {
            return Err(bad(
                "it has no host: nothing comes between `//` and the path \
                 (e.g. ws://127.0.0.1:3000/terminal)",
            ));
        }
        let mut url = Url::parse(raw).map_err(|error| bad(&error.to_string()))?;
        let scheme = match url.scheme() {
            "ws" | "http" => "ws",
            "wss" | "https" => "wss",
            other => {
                return Err(bad(&format!(
                    "`{}` URLs are not accepted: use ws://, wss://, http://, https:// or \
                     unix:/path/to/app.sock",
                    crate::inert::inert(other)
                )));
            }
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
        // Said here rather than by the authority, whose words would quote
        // the URL a second time.
        if url.port() == Some(0) {
            return Err(bad(
                "port 0 is no server's port: give the port the app listens on",
            ));
        }
        let authority = terminalwire_policy::Authority::from_url(&url)
            .map_err(|error| bad(&error.to_string()))?
            .to_string();
        if is_unix_socket_authority(&authority) {
            return Err(bad(
                "host names like local- and 12 hex digits are kept for unix: sockets",
            ));
        }
        Ok(Target {
            url,
            authority,
            unix: None,
        })
    }

    /// `unix:/absolute/path/to/app.sock`: the local per-user mode. The
    /// authority is `local-` and the first 12 hex digits of the SHA-256 of
    /// the path, so each socket has its own grants and pinned identity.
    fn unix(raw: &str, path: &str) -> Result<Target, ClientError> {
        let bad = |reason: &str| ClientError::BadUrl {
            url: raw.to_owned(),
            reason: reason.to_owned(),
        };
        let path = std::path::Path::new(path);
        if !path.is_absolute() {
            return Err(bad("expected unix:/absolute/path/to/socket"));
        }
        // One socket, one authority, however it is spelled: `//` and `.`
        // dropped (`..` kept: through a symlink it is not the parent).
        let path: std::path::PathBuf = path.components().collect();
        let path = path.as_path();
        use sha2::Digest;
        let digest = sha2::Sha256::digest(path.as_os_str().as_encoded_bytes());
        let short: String = digest[..6].iter().map(|b| format!("{b:02x}")).collect();
        let authority = format!("local-{short}");
        let url = Url::parse(&format!("ws://{authority}/terminal"))
            .map_err(|error| bad(&error.to_string()))?;
        Ok(Target {
            url,
            authority,
            unix: Some(path.to_path_buf()),
        })
    }

    /// Whether the connection is over TLS (`wss://`).
    pub fn is_tls(&self) -> bool {
        self.url.scheme() == "wss"
    }
}

/// The URL meant by one whose scheme lost a `:` or a `/`: `ws:/host/t`,
/// `ws//host/t` or `https:host/t` is `ws://host/t`, `https://host/t`.
fn mistyped_scheme(raw: &str) -> Option<String> {
    if raw.contains("://") {
        return None;
    }
    let (scheme, rest) = raw.split_once(['/', ':'])?;
    let scheme = scheme.to_ascii_lowercase();
    if !["ws", "wss", "http", "https"].contains(&scheme.as_str()) {
        return None;
    }
    let separator = &raw[scheme.len()..];
    let after = separator.trim_start_matches([':', '/', '\\']);
    let typed = &separator[..separator.len() - after.len()];
    // Right already, or `ws:3000` (a host named `ws`, and a port).
    if typed == "://"
        || after.is_empty()
        || (typed == ":" && rest.starts_with(|c: char| c.is_ascii_digit()))
    {
        return None;
    }
    Some(format!("{scheme}://{after}"))
}

/// The rustls client configuration for `wss://`: the platform's roots (or
/// the bundled Mozilla roots when the platform has none) plus the CA
/// certificates in the PEM file `ca_cert`, verified with the aws-lc-rs provider.
///
/// An unreadable or invalid `ca_cert` file is a [`ClientError::Config`].
pub fn tls_config(ca_cert: Option<&Path>) -> Result<Arc<ClientConfig>, ClientError> {
    let mut roots = platform_roots();
    if let Some(path) = ca_cert {
        for (index, certificate) in read_ca_file(path)?.into_iter().enumerate() {
            roots.add(certificate).map_err(|error| {
                ca_error(
                    path,
                    &format!("certificate {} is not usable: {error}", index + 1),
                )
            })?;
        }
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|error| ClientError::Config(format!("cannot set up TLS: {error}")))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

/// The platform's trusted roots; the bundled Mozilla roots if it has none.
fn platform_roots() -> RootCertStore {
    let mut roots = RootCertStore::empty();
    let native = rustls_native_certs::load_native_certs();
    for error in &native.errors {
        tracing::debug!("loading the platform's root certificates: {error}");
    }
    let (added, ignored) = roots.add_parsable_certificates(native.certs);
    tracing::debug!("{added} platform root certificates ({ignored} unusable)");
    if roots.is_empty() {
        tracing::debug!("no platform root certificates: using the bundled Mozilla roots");
        roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    }
    roots
}

/// The certificates of a PEM file (other PEM sections, such as keys, are
/// skipped).
fn read_ca_file(path: &Path) -> Result<Vec<CertificateDer<'static>>, ClientError> {
    let pem = std::fs::read(path).map_err(|error| ca_error(path, &error.to_string()))?;
    let certificates = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|error| ca_error(path, &format!("invalid PEM: {error}")))?;
    if certificates.is_empty() {
        return Err(ca_error(
            path,
            "it holds no PEM certificate (-----BEGIN CERTIFICATE-----)",
        ));
    }
    Ok(certificates)
}

fn ca_error(path: &Path, reason: &str) -> ClientError {
    ClientError::Config(format!(
        "cannot use the CA certificate file {} (--ca-cert or TERMINALWIRE_CA_CERT): {reason}",
        path.display()
    ))
}

/// The client's WebSocket.
pub type Socket = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// The WebSocket's read buffer (see [`websocket_config`]).
pub const READ_BUFFER: usize = 32 * 1024;

/// WebSocket limits matching the protocol's.
pub fn websocket_config() -> WebSocketConfig {
    WebSocketConfig::default()
        // tungstenite zeroes up to this much before every read attempt, and
        // a session reads after each request it answers (to batch the answers
        // of requests already there): 128 KiB by default, 3 µs a time. 32 KiB
        // costs a quarter of that and streams as fast (bench/PROFILE.md).
        .read_buffer_size(READ_BUFFER)
        .max_message_size(Some(MAX_SEALED_LEN))
        .max_frame_size(Some(MAX_SEALED_LEN))
        // A server that pings and reads nothing must not grow it.
        .max_write_buffer_size(terminalwire_protocol::MAX_WRITE_BUFFER)
}

/// Opens the WebSocket, offering the protocol's subprotocol, within `timeout`;
/// `wss://` trusts the platform's roots only (see [`connect_with`]).
pub async fn connect(target: &Target, timeout: Duration) -> Result<Socket, ClientError> {
    connect_with(target, timeout, None).await
}

/// Opens the WebSocket, offering the protocol's subprotocol, within `timeout`.
/// `wss://` uses `tls` (see [`tls_config`]), or the platform's roots when
/// `None`; `ws://` ignores it.
pub async fn connect_with(
    target: &Target,
    timeout: Duration,
    tls: Option<Arc<ClientConfig>>,
) -> Result<Socket, ClientError> {
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
    let connector = if target.is_tls() {
        let config = match tls {
            Some(config) => config,
            None => tls_config(None)?,
        };
        Connector::Rustls(config)
    } else {
        Connector::Plain
    };
    let connecting = tokio_tungstenite::connect_async_tls_with_config(
        request,
        Some(websocket_config()),
        true,
        Some(connector),
    );
    let (socket, response) = match tokio::time::timeout(timeout, connecting).await {
        Err(_) => return Err(unavailable(format!("timed out after {timeout:?}"))),
        Ok(Err(error)) => return Err(unavailable(describe(error, target))),
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

/// Connects to a `unix:` target and upgrades to a WebSocket.
pub async fn connect_unix(
    target: &Target,
    timeout: Duration,
) -> Result<WebSocketStream<tokio::net::UnixStream>, ClientError> {
    let path = target.unix.as_deref().unwrap_or(std::path::Path::new(""));
    let unavailable = |reason: String| ClientError::Unavailable {
        target: format!("unix:{}", path.display()),
        reason,
    };
    let mut request = target
        .url
        .as_str()
        .into_client_request()
        .map_err(|error| unavailable(error.to_string()))?;
    request.headers_mut().insert(
        SEC_WEBSOCKET_PROTOCOL,
        HeaderValue::from_static(SUBPROTOCOL),
    );
    let connecting = async {
        let stream = match tokio::net::UnixStream::connect(path).await {
            Ok(stream) => stream,
            Err(error) => return Err(unavailable(describe_unix_failure(path, error).await)),
        };
        tokio_tungstenite::client_async_with_config(request, stream, Some(websocket_config()))
            .await
            .map_err(|error| unavailable(describe(error, target)))
    };
    let (socket, response) = match tokio::time::timeout(timeout, connecting).await {
        Err(_) => return Err(unavailable(format!("timed out after {timeout:?}"))),
        Ok(result) => result?,
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

/// Why connecting to the socket at `path` failed, in the words of what is
/// there: connecting to a file that is no socket says "connection
/// refused" (ECONNREFUSED, or ENOTSOCK), which blames a server there is not.
async fn describe_unix_failure(path: &Path, error: std::io::Error) -> String {
    use std::os::unix::fs::FileTypeExt;
    let shown = path.display();
    match tokio::fs::metadata(path).await {
        Ok(meta) if !meta.file_type().is_socket() => {
            let kind = meta.file_type();
            let what = if kind.is_dir() {
                "a folder"
            } else if kind.is_file() {
                "a file"
            } else if kind.is_fifo() {
                "a named pipe"
            } else {
                "a device"
            };
            format!(
                "{shown} is {what}, not a socket; give the app's socket, e.g. unix:/run/user/1000/app.sock"
            )
        }
        Ok(_) if error.kind() == std::io::ErrorKind::ConnectionRefused => {
            format!("nothing is listening on the socket {shown} (is the app running?)")
        }
        Err(missing) if missing.kind() == std::io::ErrorKind::NotFound => {
            format!("there is no socket at {shown} (is the app running? check the path)")
        }
        _ => format!("{shown}: {error}"),
    }
}

fn describe(error: tungstenite::Error, target: &Target) -> String {
    match error {
        tungstenite::Error::Io(error) => {
            match error
                .get_ref()
                .and_then(|inner| inner.downcast_ref::<rustls::Error>())
            {
                Some(tls) => describe_tls(tls, target),
                None if target.is_tls() && error.kind() == std::io::ErrorKind::UnexpectedEof => {
                    "the server closed the connection during the TLS handshake".to_owned()
                }
                None => error.to_string(),
            }
        }
        tungstenite::Error::Tls(tungstenite::error::TlsError::Rustls(error)) => {
            describe_tls(&error, target)
        }
        tungstenite::Error::Tls(tungstenite::error::TlsError::InvalidDnsName) => format!(
            "`{}` is not a valid TLS server name",
            target.url.host_str().unwrap_or_default()
        ),
        tungstenite::Error::Http(response) => describe_refusal(&response, target),
        // A web server of HTTP/1.0 only (`python3 -m http.server`).
        tungstenite::Error::Protocol(ProtocolError::WrongHttpVersion) => format!(
            "the server answered in HTTP/1.0: it is a web server, not a terminalwire endpoint; \
             {}",
            check_where(target)
        ),
        tungstenite::Error::Protocol(ProtocolError::HandshakeIncomplete) => {
            let tls = if target.is_tls() {
                ""
            } else {
                " (if it serves TLS, use wss:// or https://)"
            };
            format!(
                "the server closed the connection without answering the WebSocket upgrade: it is \
                 not a terminalwire endpoint{tls}; {}",
                check_where(target)
            )
        }
        tungstenite::Error::Protocol(
            ProtocolError::MissingUpgradeWebSocketHeader
            | ProtocolError::MissingConnectionUpgradeHeader
            | ProtocolError::SecWebSocketAcceptKeyMismatch,
        ) => format!(
            "the server's answer is not a WebSocket upgrade (a proxy in between?): it is not a \
             terminalwire endpoint; {}",
            check_where(target)
        ),
        tungstenite::Error::Protocol(ProtocolError::SecWebSocketSubProtocolError(_)) => format!(
            "the server does not speak the terminalwire protocol (it did not accept the `{SUBPROTOCOL}` subprotocol)"
        ),
        tungstenite::Error::Protocol(ProtocolError::HttparseError(error)) if !target.is_tls() => {
            format!(
                "the server did not answer in HTTP ({error}); if it serves TLS, use wss:// or https://"
            )
        }
        other => other.to_string(),
    }
}

/// What to check when the server there is not a terminalwire endpoint.
fn check_where(target: &Target) -> &'static str {
    if target.unix.is_some() {
        "check the socket's path"
    } else if target.url.path() == "/terminal" {
        "check the URL (the host and port)"
    } else {
        "check the path, e.g. /terminal"
    }
}

/// Most characters of server-chosen text (a header, a body's first line)
/// an error shows.
const MAX_QUOTED: usize = 120;

/// `text` cut to [`MAX_QUOTED`] characters and made inert.
fn quoted(text: &str) -> String {
    let text = text.trim();
    let mut shown: String = text.chars().take(MAX_QUOTED).collect();
    if shown.len() < text.len() {
        shown.push('…');
    }
    crate::inert::inert(&shown).into_owned()
}

/// One line for an HTTP answer to the WebSocket upgrade other than 101
/// (the server is a web server, but not this one's endpoint). The body is
/// quoted only when it is short plain text (never a web page), cut short
/// and inert.
fn describe_refusal(
    response: &tungstenite::http::Response<Option<Vec<u8>>>,
    target: &Target,
) -> String {
    use tungstenite::http::header::{CONTENT_TYPE, LOCATION};
    let status = response.status();
    let header = |name| {
        response
            .headers()
            .get(name)
            .map(|value: &HeaderValue| String::from_utf8_lossy(value.as_bytes()).into_owned())
    };
    let body = response
        .body()
        .as_deref()
        .map(String::from_utf8_lossy)
        .unwrap_or_default();
    let is_page = header(CONTENT_TYPE)
        .is_some_and(|kind| kind.to_ascii_lowercase().contains("html"))
        || body.trim_start().starts_with('<');
    let check = check_where(target);
    let path = if target.unix.is_some() {
        String::new()
    } else {
        format!(" at {}", quoted(target.url.path()))
    };
    if status.is_success() {
        let page = if is_page { ", a web page" } else { "" };
        return format!("not a terminalwire endpoint (HTTP {status}{page}{path}); {check}");
    }
    if status == tungstenite::http::StatusCode::NOT_FOUND
        || status == tungstenite::http::StatusCode::GONE
    {
        return format!("no terminalwire endpoint (HTTP {status}{path}); {check}");
    }
    if status.is_redirection()
        && let Some(location) = header(LOCATION)
    {
        return format!(
            "the server redirects to {} (HTTP {status}); if that is the app's terminal \
             endpoint, use it (wss:// for https://)",
            quoted(&location)
        );
    }
    let said = body
        .lines()
        .next()
        .filter(|line| !is_page && !line.trim().is_empty())
        .map(|line| format!(": {}", quoted(line)))
        .unwrap_or_default();
    format!("the server refused the WebSocket upgrade with HTTP {status}{said}")
}

/// Most names of a certificate an error shows.
const MAX_NAMES_SHOWN: usize = 8;

/// A readable reason for a failed TLS handshake, naming rustls's error kind.
fn describe_tls(error: &rustls::Error, target: &Target) -> String {
    let host = target.url.host_str().unwrap_or_default();
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let certificate = |reason: String| format!("the server's certificate {reason}");
    match error {
        rustls::Error::InvalidCertificate(error) => match error {
            CertificateError::UnknownIssuer => certificate(
                "is not trusted (UnknownIssuer); use --ca-cert FILE for a private CA".into(),
            ),
            CertificateError::NotValidForName => {
                certificate(format!("is not valid for {host} (NotValidForName)"))
            }
            CertificateError::NotValidForNameContext { presented, .. } => {
                // The certificate's words: shown inert (a name may hold a
                // line break), a few of them, cut short.
                let mut names: Vec<String> = presented
                    .iter()
                    .take(MAX_NAMES_SHOWN)
                    .map(|name| {
                        crate::inert::inert(&name.chars().take(200).collect::<String>())
                            .into_owned()
                    })
                    .collect();
                if presented.len() > MAX_NAMES_SHOWN {
                    names.push(format!("{} more", presented.len() - MAX_NAMES_SHOWN));
                }
                let names = if names.is_empty() {
                    "no names".to_owned()
                } else {
                    names.join(", ")
                };
                certificate(format!(
                    "is not valid for {host} (NotValidForName): it is for {names}"
                ))
            }
            CertificateError::Expired | CertificateError::ExpiredContext { .. } => certificate(
                "has expired (Expired); check the server's certificate and this machine's clock"
                    .into(),
            ),
            CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. } => {
                certificate("is not valid yet (NotValidYet); check this machine's clock".into())
            }
            CertificateError::Revoked => certificate("has been revoked (Revoked)".into()),
            CertificateError::InvalidPurpose | CertificateError::InvalidPurposeContext { .. } => {
                certificate("is not meant for TLS servers (InvalidPurpose)".into())
            }
            CertificateError::BadEncoding => certificate("is malformed (BadEncoding)".into()),
            // Typically signed by another key than the trusted CA of the
            // issuer's name: not trusted either.
            CertificateError::BadSignature => certificate(
                "is not trusted (BadSignature): its signature does not match the trusted \
                 certificate authority of that name; use --ca-cert FILE for a private CA"
                    .into(),
            ),
            other => certificate(format!("was rejected ({other:?})")),
        },
        rustls::Error::InvalidMessage(_)
        | rustls::Error::InappropriateMessage { .. }
        | rustls::Error::InappropriateHandshakeMessage { .. } => format!(
            "the TLS handshake failed ({error}); does the server speak TLS on this port? \
             (for a plain server use ws:// or http://)"
        ),
        rustls::Error::AlertReceived(alert) => {
            format!("the server refused the TLS handshake ({alert:?} alert)")
        }
        rustls::Error::PeerIncompatible(_) | rustls::Error::NoCertificatesPresented => {
            format!("the server's TLS is not compatible with this client ({error})")
        }
        other => format!("the TLS handshake failed: {other}"),
    }
}

/// Whether `authority` is one [`Target::unix`] makes: a host of that name
/// would share a socket app's folder (its grants, its pinned identity).
fn is_unix_socket_authority(authority: &str) -> bool {
    authority
        .strip_prefix("local-")
        .is_some_and(|digest| digest.len() == 12 && digest.bytes().all(|b| b.is_ascii_hexdigit()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The reason `connect` gives for a loopback server that reads the
    /// upgrade request and answers `answer` (nothing: it closes) at `path`.
    async fn refused_with(answer: &'static [u8], path: &str) -> String {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            let (mut stream, _) = listener.accept().await.unwrap();
            let mut request = Vec::new();
            let mut buffer = [0; 1024];
            while !request.ends_with(b"\r\n\r\n") {
                let read = stream.read(&mut buffer).await.unwrap();
                assert_ne!(read, 0, "the request ended early");
                request.extend_from_slice(&buffer[..read]);
            }
            stream.write_all(answer).await.unwrap();
            stream.shutdown().await.unwrap();
        });
        let target = Target::parse(&format!("ws://{addr}{path}")).unwrap();
        let error = connect(&target, Duration::from_secs(30)).await.unwrap_err();
        server.await.unwrap();
        assert_eq!(error.exit_code(), crate::exit_code::UNAVAILABLE, "{error}");
        let message = error.to_string();
        assert!(!message.contains('\n'), "{message}");
        assert!(!message.chars().any(crate::inert::is_unsafe), "{message:?}");
        message
    }

    /// Web servers that are not a terminalwire endpoint: one line that
    /// says so and what to check, not tungstenite's words or a page of HTML.
    #[tokio::test]
    async fn a_server_that_is_not_a_terminalwire_endpoint_is_said_so_in_one_line() {
        let page: &[u8] =
            b"HTTP/1.1 200 OK\r\ncontent-type: text/html\r\ncontent-length: 60\r\n\r\n\
            <!doctype html><style>body{color:red}</style>\x1b[2J<h1>x</h1>";
        let said = refused_with(page, "/").await;
        assert!(
            said.ends_with(
                "not a terminalwire endpoint (HTTP 200 OK, a web page at /); check the path, \
                 e.g. /terminal"
            ),
            "{said}"
        );
        assert!(!said.contains("<style>"), "{said}");
        let said = refused_with(page, "/terminal").await;
        assert!(
            said.ends_with("check the URL (the host and port)"),
            "{said}"
        );

        let missing: &[u8] = b"HTTP/1.1 404 Not Found\r\ncontent-length: 9\r\n\r\nnot found";
        let said = refused_with(missing, "/app").await;
        assert!(
            said.ends_with(
                "no terminalwire endpoint (HTTP 404 Not Found at /app); check the path, e.g. \
                 /terminal"
            ),
            "{said}"
        );

        // `python3 -m http.server`.
        let old: &[u8] = b"HTTP/1.0 404 File not found\r\nContent-Type: text/html\r\n\r\n<html>";
        let said = refused_with(old, "/terminal").await;
        assert!(
            said.ends_with(
                "the server answered in HTTP/1.0: it is a web server, not a terminalwire \
                 endpoint; check the URL (the host and port)"
            ),
            "{said}"
        );

        let said = refused_with(b"", "/terminal").await;
        assert!(
            said.ends_with(
                "the server closed the connection without answering the WebSocket upgrade: it \
                 is not a terminalwire endpoint (if it serves TLS, use wss:// or https://); \
                 check the URL (the host and port)"
            ),
            "{said}"
        );

        let moved: &[u8] =
            b"HTTP/1.1 301 Moved Permanently\r\nlocation: https://h/t\xe2\x80\xaeexe\r\n\
            content-length: 0\r\n\r\n";
        let said = refused_with(moved, "/terminal").await;
        assert!(
            said.ends_with(
                "redirects to https://h/t\\u{202e}exe (HTTP 301 Moved Permanently); if \
                that is the app's terminal endpoint, use it (wss:// for https://)"
            ),
            "{said}"
        );

        // Short plain text is quoted, cut short and inert.
        let long = format!(
            "HTTP/1.1 403 Forbidden\r\ncontent-length: 300\r\n\r\ndevice not approved\x1b]0;x\x07{}",
            "y".repeat(277)
        );
        let said = refused_with(Box::leak(long.into_bytes().into_boxed_slice()), "/t").await;
        assert!(
            said.contains(
                "refused the WebSocket upgrade with HTTP 403 Forbidden: device not approved\\u{1b}]0;x\\u{7}yyy"
            ),
            "{said}"
        );
        assert!(said.ends_with("y…"), "{said}");
        assert!(said.len() < 250, "{said}");
    }

    /// Connecting to a `unix:` path that is no socket, or a socket
    /// nobody listens on, says which (it said "Connection refused" for
    /// both, and "No such file or directory" for a missing one).
    #[tokio::test]
    async fn a_unix_path_that_is_no_listening_socket_says_what_is_there() {
        let dir = tempfile::tempdir().unwrap();
        let reason = async |path: &Path| {
            let target = Target::parse(&format!("unix:{}", path.display())).unwrap();
            let error = connect_unix(&target, Duration::from_secs(30))
                .await
                .unwrap_err();
            assert_eq!(error.exit_code(), crate::exit_code::UNAVAILABLE, "{error}");
            error.to_string()
        };
        let file = dir.path().join("notes.txt");
        std::fs::write(&file, "x").unwrap();
        let said = reason(&file).await;
        assert!(
            said.ends_with(&format!(
                "{}: {} is a file, not a socket; give the app's socket, e.g. \
                 unix:/run/user/1000/app.sock",
                file.display(),
                file.display()
            )),
            "{said}"
        );
        let said = reason(dir.path()).await;
        assert!(said.contains("is a folder, not a socket"), "{said}");
        let missing = dir.path().join("gone.sock");
        let said = reason(&missing).await;
        assert!(
            said.ends_with(&format!(
                "there is no socket at {} (is the app running? check the path)",
                missing.display()
            )),
            "{said}"
        );
        // A socket left by an app that is gone.
        let stale = dir.path().join("stale.sock");
        drop(std::os::unix::net::UnixListener::bind(&stale).unwrap());
        let said = reason(&stale).await;
        assert!(
            said.ends_with(&format!(
                "nothing is listening on the socket {} (is the app running?)",
                stale.display()
            )),
            "{said}"
        );
    }

    #[test]
    fn a_host_cannot_take_a_unix_socket_apps_folder() {
        let socket = Target::parse("unix:/run/user/1000/app.sock").unwrap();
        assert!(is_unix_socket_authority(&socket.authority));
        let same = format!("ws://{}/terminal", socket.authority.to_uppercase());
        let refused = Target::parse(&same).unwrap_err();
        assert!(refused.to_string().contains("unix: sockets"), "{refused}");
        for other in ["ws://local-host/t", "ws://local-0123456789ab:8080/t"] {
            Target::parse(other).unwrap();
        }
    }

    #[test]
    fn http_urls_map_to_websocket_urls() {
        let target = Target::parse("http://127.0.0.1:3000/terminal?x=1#frag").unwrap();
        assert_eq!(target.url.as_str(), "ws://127.0.0.1:3000/terminal?x=1");
        assert_eq!(target.authority, "127.0.0.1:3000");
        let target = Target::parse("ws://Example.COM:80/t").unwrap();
        assert_eq!(target.authority, "example.com");
        assert!(!target.is_tls());
        let target = Target::parse("https://127.0.0.1:8443/terminal").unwrap();
        assert_eq!(target.url.as_str(), "wss://127.0.0.1:8443/terminal");
        assert!(target.is_tls());
        let target = Target::parse("wss://Secure.Example/t").unwrap();
        assert_eq!(target.url.as_str(), "wss://secure.example/t");
        assert_eq!(target.authority, "secure.example");
    }

    #[test]
    fn unusable_ca_files_are_config_errors() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing.pem");
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "not a certificate\n").unwrap();
        let broken = dir.path().join("broken.pem");
        std::fs::write(
            &broken,
            "-----BEGIN CERTIFICATE-----\nnot base64!\n-----END CERTIFICATE-----\n",
        )
        .unwrap();
        for path in [missing, empty, broken] {
            let error = tls_config(Some(&path)).unwrap_err();
            assert!(matches!(error, ClientError::Config(_)), "{error:?}");
            assert_eq!(error.exit_code(), crate::exit_code::CONFIG);
            let message = error.to_string();
            assert!(message.contains(&path.display().to_string()), "{message}");
            assert!(!message.contains('\n'), "{message}");
        }
    }

    #[test]
    fn the_default_tls_config_has_roots() {
        assert!(!platform_roots().is_empty());
        tls_config(None).unwrap();
    }

    /// `ws:///terminal` was read as host `terminal` and failed at the DNS
    /// lookup (69); a URL to port 0 was dialled. Both are usage errors.
    #[test]
    fn a_url_without_a_host_or_to_port_zero_is_a_usage_error() {
        for (url, said) in [
            ("ws:///terminal", "it has no host"),
            ("https:///terminal", "it has no host"),
            ("ws:////127.0.0.1:3000/terminal", "it has no host"),
            ("ws://127.0.0.1:0/terminal", "port 0 is no server's port"),
            ("http://example.com:0/", "port 0 is no server's port"),
        ] {
            let error = Target::parse(url).unwrap_err();
            assert!(
                matches!(error, ClientError::BadUrl { .. }),
                "{url}: {error:?}"
            );
            assert_eq!(error.exit_code(), crate::exit_code::USAGE);
            assert!(error.to_string().contains(said), "{url}: {error}");
        }
    }

    #[test]
    fn unusable_urls_are_refused() {
        for url in [
            "ftp://x/",
            "not a url",
            "ws://user:pw@h/",
            "file:///etc/passwd",
        ] {
            assert!(Target::parse(url).is_err(), "{url} accepted");
        }
        // A socket's authority does not depend on how its path is spelled.
        let authority = |url: &str| Target::parse(url).unwrap().authority;
        assert_eq!(
            authority("unix:///run/./x.sock"),
            authority("unix:/run/x.sock")
        );
        assert_eq!(
            authority("unix:/run//x.sock"),
            authority("unix:/run/x.sock")
        );
        assert_ne!(
            authority("unix:/run/y/../x.sock"),
            authority("unix:/run/x.sock")
        );
        // A scheme that lost a `:` or a `/`: the URL meant.
        for (typed, meant) in [
            (
                "ws:/127.0.0.1:3000/terminal",
                "ws://127.0.0.1:3000/terminal",
            ),
            (
                "ws//127.0.0.1:3000/terminal",
                "ws://127.0.0.1:3000/terminal",
            ),
            ("HTTPS:example.com/t", "https://example.com/t"),
            ("wss:\\\\h/t", "wss://h/t"),
        ] {
            let said = Target::parse(typed).unwrap_err().to_string();
            assert!(said.ends_with(&format!("did you mean {meant}?")), "{said}");
        }
        // A host named like a scheme, with a port: left to the rule below.
        assert_eq!(mistyped_scheme("ws:3000/t"), None);
        assert_eq!(mistyped_scheme("ws:///h/t"), None);
        let said = Target::parse(" ").unwrap_err().to_string();
        assert!(said.contains("it is empty"), "{said}");
        let said = Target::parse("ftp://x/").unwrap_err().to_string();
        assert!(
            said.ends_with("`ftp` URLs are not accepted: use ws://, wss://, http://, https:// or unix:/path/to/app.sock"),
            "{said}"
        );
        // A URL without its scheme: told which to add.
        let missing = Target::parse("localhost:3000/terminal").unwrap_err();
        assert!(
            missing.to_string().contains(
                "did you mean https://localhost:3000/terminal, or ws://localhost:3000/terminal"
            ),
            "{missing}"
        );
    }
}
