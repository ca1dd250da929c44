//! Serving an app over TLS (`wss://`), and development certificates.
//!
//! TLS is rustls with the *ring* crypto provider, used explicitly (no
//! process-wide default provider is needed or installed). The app is served by
//! `axum::serve` exactly like the plain path, over a [`TlsListener`] that
//! wraps a TCP listener and hands over connections once their TLS handshake
//! is done (handshakes run concurrently, each bounded by
//! [`HANDSHAKE_TIMEOUT`], so a slow client never blocks others).
//!
//! ```no_run
//! use axum::{Router, routing::get};
//! use terminalwire_server::{Context, Terminal, tls};
//!
//! async fn cli(ctx: Context) -> anyhow::Result<()> {
//!     ctx.stdout().println("Hello over TLS!").await?;
//!     Ok(())
//! }
//!
//! # async fn serve() -> anyhow::Result<()> {
//! let terminal = Terminal::new(cli);
//! let app = Router::new().route("/terminal", terminal.route());
//! let config = tls::TlsConfig::from_pem_files("cert.pem", "key.pem")?;
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
//! let draining = terminal.clone();
//! tls::serve(listener, config, app, async move {
//!     let _ = tokio::signal::ctrl_c().await;
//!     draining.begin_shutdown();
//! })
//! .await?;
//! terminal.shutdown().await;
//! # Ok(())
//! # }
//! ```
//!
//! For development, [`self_signed`] makes a certificate for names such as
//! `localhost` and `127.0.0.1`; clients trust it with
//! `terminalwire --ca-cert dev-cert.pem wss://...`.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use rustls::ServerConfig;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;

use crate::per_address::PerAddress;
use crate::terminal::TerminalConnection;

/// How long a client may take to complete its TLS handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// At most this many TLS handshakes run at once; further connections wait in
/// the kernel's accept queue.
const MAX_HANDSHAKES: usize = 1024;

/// At most this many of them from one client address (IPv6: one /64); a
/// connection beyond is closed at once. Connections that never say hello
/// hold their place for [`HANDSHAKE_TIMEOUT`]: without this, 256 of them
/// from one machine kept every other user out.
const MAX_HANDSHAKES_PER_ADDRESS: usize = 8;

/// Why a TLS configuration or certificate could not be made.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TlsError {
    /// A PEM file could not be read.
    #[error("cannot read {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: io::Error,
    },
    /// The certificate chain or private key is missing or malformed.
    #[error("{0}")]
    Pem(String),
    /// rustls refused the certificate and key (e.g. they do not match).
    #[error("unusable certificate or key: {0}")]
    Rustls(#[from] rustls::Error),
    /// A certificate could not be generated.
    #[error("cannot generate a certificate: {0}")]
    Generate(#[from] rcgen::Error),
    /// A development certificate could not be written.
    #[error("cannot write {}: {source}", path.display())]
    Write {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: io::Error,
    },
}

/// A server's TLS configuration: its certificate chain and private key.
/// Cheap to clone.
#[derive(Debug, Clone)]
pub struct TlsConfig {
    config: Arc<ServerConfig>,
}

impl TlsConfig {
    /// From PEM text: `cert_chain` holds the server's certificate first, then
    /// any intermediates; `key` holds its private key (PKCS#8, PKCS#1 or
    /// SEC1).
    pub fn from_pem(cert_chain: &[u8], key: &[u8]) -> Result<Self, TlsError> {
        Self::from_pem_named(cert_chain, "the certificate PEM", key, "the key PEM")
    }

    /// From PEM files (see [`from_pem`](Self::from_pem)).
    pub fn from_pem_files(
        cert_chain: impl AsRef<Path>,
        key: impl AsRef<Path>,
    ) -> Result<Self, TlsError> {
        let read = |path: &Path| {
            std::fs::read(path).map_err(|source| TlsError::Read {
                path: path.to_owned(),
                source,
            })
        };
        let (cert_path, key_path) = (cert_chain.as_ref(), key.as_ref());
        Self::from_pem_named(
            &read(cert_path)?,
            &cert_path.display().to_string(),
            &read(key_path)?,
            &key_path.display().to_string(),
        )
    }

    fn from_pem_named(
        cert_chain: &[u8],
        cert_name: &str,
        key: &[u8],
        key_name: &str,
    ) -> Result<Self, TlsError> {
        let chain = CertificateDer::pem_slice_iter(cert_chain)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|error| TlsError::Pem(format!("{cert_name}: invalid PEM: {error}")))?;
        if chain.is_empty() {
            return Err(TlsError::Pem(format!(
                "{cert_name} holds no certificate (-----BEGIN CERTIFICATE-----)"
            )));
        }
        let key = PrivateKeyDer::from_pem_slice(key).map_err(|error| match error {
            rustls::pki_types::pem::Error::NoItemsFound => TlsError::Pem(format!(
                "{key_name} holds no private key (-----BEGIN PRIVATE KEY-----)"
            )),
            error => TlsError::Pem(format!("{key_name}: invalid PEM: {error}")),
        })?;
        Self::from_der(chain, key)
    }

    /// From DER: the chain (server certificate first) and its private key.
    pub fn from_der(
        cert_chain: Vec<CertificateDer<'static>>,
        key: PrivateKeyDer<'static>,
    ) -> Result<Self, TlsError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_single_cert(cert_chain, key)?;
        // The terminal endpoint is an HTTP/1.1 WebSocket upgrade.
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(TlsConfig {
            config: Arc::new(config),
        })
    }

    /// A configuration built by the app itself (its own provider, client
    /// authentication, resumption...). Its ALPN protocols, if any, must
    /// include `http/1.1`.
    pub fn from_rustls(config: Arc<ServerConfig>) -> Self {
        TlsConfig { config }
    }

    /// The rustls configuration.
    pub fn rustls(&self) -> &Arc<ServerConfig> {
        &self.config
    }
}

/// A TCP listener that yields TLS streams, for [`axum::serve()`].
///
/// A background task accepts TCP connections and runs their handshakes
/// concurrently; connections whose handshake fails or times out are dropped
/// (logged at debug level). Dropping the listener stops that task and any
/// handshake in progress.
#[derive(Debug)]
pub struct TlsListener {
    local_addr: SocketAddr,
    ready: mpsc::Receiver<(TlsStream<TcpStream>, SocketAddr)>,
    _acceptor: AbortOnDrop,
}

impl TlsListener {
    /// Wraps a bound listener. Must be called within a tokio runtime.
    pub fn new(listener: TcpListener, config: &TlsConfig) -> io::Result<Self> {
        let local_addr = listener.local_addr()?;
        let (sender, ready) = mpsc::channel(16);
        let acceptor = TlsAcceptor::from(config.config.clone());
        let task = tokio::spawn(accept_loop(listener, acceptor, sender));
        Ok(TlsListener {
            local_addr,
            ready,
            _acceptor: AbortOnDrop(task),
        })
    }

    /// Wraps a bound standard listener (made non-blocking here). Must be
    /// called within a tokio runtime.
    pub fn from_std(listener: std::net::TcpListener, config: &TlsConfig) -> io::Result<Self> {
        listener.set_nonblocking(true)?;
        Self::new(TcpListener::from_std(listener)?, config)
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.ready.recv().await {
            Some(connection) => connection,
            // The accept loop never ends on its own; should it have died,
            // accept nothing rather than spin.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        Ok(self.local_addr)
    }
}

impl<S: TerminalConnection> TerminalConnection for TlsStream<S> {
    fn send_small_writes_at_once(&self) {
        self.get_ref().0.send_small_writes_at_once();
    }
}

#[derive(Debug)]
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

async fn accept_loop(
    listener: TcpListener,
    acceptor: TlsAcceptor,
    ready: mpsc::Sender<(TlsStream<TcpStream>, SocketAddr)>,
) {
    let mut handshakes = JoinSet::new();
    let per_address = PerAddress::default();
    loop {
        tokio::select! {
            Some(_) = handshakes.join_next(), if !handshakes.is_empty() => {}
            accepted = listener.accept(), if handshakes.len() < MAX_HANDSHAKES => {
                let (stream, peer) = match accepted {
                    Ok(accepted) => accepted,
                    Err(error) => {
                        accept_error(error).await;
                        continue;
                    }
                };
                let Some(place) = per_address.take(peer.ip(), MAX_HANDSHAKES_PER_ADDRESS) else {
                    tracing::debug!(%peer, "too many TLS handshakes from this address");
                    continue;
                };
                // Before the handshake, whose flights are small writes too.
                stream.send_small_writes_at_once();
                let acceptor = acceptor.clone();
                let ready = ready.clone();
                handshakes.spawn(async move {
                    let _place = place;
                    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                        Ok(Ok(stream)) => {
                            let _ = ready.send((stream, peer)).await;
                        }
                        Ok(Err(error)) => {
                            tracing::debug!(%peer, "TLS handshake failed: {error}");
                        }
                        Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
                    }
                });
            }
            () = ready.closed() => return,
        }
    }
}

/// Like axum's plain listener: per-connection errors are skipped, others
/// (such as running out of file descriptors) pause accepting for a second.
async fn accept_error(error: io::Error) {
    use io::ErrorKind::{ConnectionAborted, ConnectionRefused, ConnectionReset};
    if matches!(
        error.kind(),
        ConnectionRefused | ConnectionAborted | ConnectionReset
    ) {
        return;
    }
    tracing::error!("accept error: {error}");
    tokio::time::sleep(Duration::from_secs(1)).await;
}

/// Serves `app` over TLS on `listener` until `shutdown` resolves, then waits
/// for open connections to close (like `axum::serve(..).with_graceful_shutdown`).
///
/// To drain running terminal sessions, call
/// [`Terminal::begin_shutdown`](crate::Terminal::begin_shutdown) in
/// `shutdown` and [`Terminal::shutdown`](crate::Terminal::shutdown) after this
/// returns.
pub async fn serve(
    listener: TcpListener,
    config: TlsConfig,
    app: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> io::Result<()> {
    // The SDK's accept loop hands each request the peer's address, which
    // `Terminal::route` counts sessions by, and times out slow headers.
    let listener = TlsListener::new(listener, &config)?;
    crate::accept::serve(listener, app, shutdown).await;
    Ok(())
}

/// A development certificate and its private key, in PEM.
#[derive(Clone)]
pub struct DevCertificate {
    /// The self-signed certificate (`-----BEGIN CERTIFICATE-----`).
    pub cert_pem: String,
    /// Its private key (`-----BEGIN PRIVATE KEY-----`, PKCS#8).
    pub key_pem: String,
}

impl std::fmt::Debug for DevCertificate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DevCertificate")
            .field("cert_pem", &self.cert_pem)
            .finish_non_exhaustive()
    }
}

/// The file names [`DevCertificate::write_to`] uses.
pub const DEV_CERT_FILE: &str = "dev-cert.pem";
/// See [`DEV_CERT_FILE`].
pub const DEV_KEY_FILE: &str = "dev-key.pem";

impl DevCertificate {
    /// The server configuration for this certificate.
    pub fn tls_config(&self) -> Result<TlsConfig, TlsError> {
        TlsConfig::from_pem(self.cert_pem.as_bytes(), self.key_pem.as_bytes())
    }

    /// Writes [`DEV_CERT_FILE`] and [`DEV_KEY_FILE`] (the key readable by its
    /// owner only) into `dir`, creating it, and returns their paths.
    pub fn write_to(&self, dir: impl AsRef<Path>) -> Result<(PathBuf, PathBuf), TlsError> {
        let dir = dir.as_ref();
        std::fs::create_dir_all(dir).map_err(|source| TlsError::Write {
            path: dir.to_owned(),
            source,
        })?;
        let cert = dir.join(DEV_CERT_FILE);
        let key = dir.join(DEV_KEY_FILE);
        write_file(&key, self.key_pem.as_bytes(), 0o600)?;
        write_file(&cert, self.cert_pem.as_bytes(), 0o644)?;
        Ok((cert, key))
    }
}

fn write_file(path: &Path, contents: &[u8], mode: u32) -> Result<(), TlsError> {
    use std::io::Write as _;
    let error = |source| TlsError::Write {
        path: path.to_owned(),
        source,
    };
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
        options.mode(mode);
        let mut file = options.open(path).map_err(error)?;
        // An existing file keeps its mode on open: set it.
        file.set_permissions(std::fs::Permissions::from_mode(mode))
            .map_err(error)?;
        file.write_all(contents).map_err(error)
    }
    #[cfg(not(unix))]
    {
        let _ = mode;
        options
            .open(path)
            .and_then(|mut file| file.write_all(contents))
            .map_err(error)
    }
}

/// Generates a self-signed certificate for development, valid for `names`
/// (host names and IP addresses, e.g. `["localhost", "127.0.0.1"]`).
///
/// Clients must be told to trust it (`terminalwire --ca-cert dev-cert.pem`);
/// never use it in production.
pub fn self_signed<S: AsRef<str>>(names: &[S]) -> Result<DevCertificate, TlsError> {
    let names: Vec<String> = names.iter().map(|name| name.as_ref().to_owned()).collect();
    let mut params = rcgen::CertificateParams::new(names)?;
    params.distinguished_name = rcgen::DistinguishedName::new();
    params.distinguished_name.push(
        rcgen::DnType::CommonName,
        "terminalwire development certificate",
    );
    let key = rcgen::KeyPair::generate()?;
    let cert = params.self_signed(&key)?;
    Ok(DevCertificate {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn connections_that_never_say_hello_hold_no_one_elses_handshake() {
        use tokio::io::AsyncReadExt;
        let dev = self_signed(&["127.0.0.1"]).unwrap();
        let tcp = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = tcp.local_addr().unwrap();
        let (_terminal, app) = crate::terminal::tests::sessions_per_address(64);
        let server = tokio::spawn(serve(
            tcp,
            dev.tls_config().unwrap(),
            app,
            std::future::pending(),
        ));
        let dir = tempfile::tempdir().unwrap();
        let (cert, _) = dev.write_to(dir.path()).unwrap();
        let connector = tokio_rustls::TlsConnector::from(
            terminalwire_client::connect::tls_config(Some(&cert)).unwrap(),
        );
        let connect_from = |ip: [u8; 4]| {
            let connector = connector.clone();
            async move {
                let socket = tokio::net::TcpSocket::new_v4().unwrap();
                socket.bind((ip, 0).into()).unwrap();
                let tcp = socket.connect(addr).await.unwrap();
                let name = rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap();
                connector.connect(name, tcp).await
            }
        };
        // More silent connections from one address than the server once
        // had handshake slots in all (256).
        let mut silent = Vec::new();
        for _ in 0..300 {
            silent.push(TcpStream::connect(addr).await.unwrap());
        }
        // Those beyond the address's share are closed at once…
        let mut byte = [0u8; 1];
        let last = silent.last_mut().unwrap();
        let closed = tokio::time::timeout(Duration::from_secs(5), last.read(&mut byte)).await;
        assert!(
            matches!(closed, Ok(Ok(0) | Err(_))),
            "a connection beyond the share was kept: {closed:?}"
        );
        // …and another machine (here another loopback address) is served.
        let other = tokio::time::timeout(HANDSHAKE_TIMEOUT / 2, connect_from([127, 0, 0, 2])).await;
        assert!(
            matches!(other, Ok(Ok(_))),
            "another address waited behind the silent ones: {other:?}"
        );
        server.abort();
    }

    #[test]
    fn self_signed_certificates_make_a_config() {
        let dev = self_signed(&["localhost", "127.0.0.1"]).unwrap();
        assert!(dev.cert_pem.starts_with("-----BEGIN CERTIFICATE-----"));
        assert!(dev.key_pem.contains("PRIVATE KEY"));
        let config = dev.tls_config().unwrap();
        assert_eq!(config.rustls().alpn_protocols, [b"http/1.1".to_vec()]);
        assert!(!format!("{dev:?}").contains("PRIVATE KEY"));
    }

    #[test]
    fn bad_pem_is_refused() {
        let dev = self_signed(&["localhost"]).unwrap();
        let other = self_signed(&["localhost"]).unwrap();
        let no_cert = TlsConfig::from_pem(b"", dev.key_pem.as_bytes()).unwrap_err();
        assert!(no_cert.to_string().contains("no certificate"), "{no_cert}");
        let no_key = TlsConfig::from_pem(dev.cert_pem.as_bytes(), b"").unwrap_err();
        assert!(no_key.to_string().contains("no private key"), "{no_key}");
        let mismatch =
            TlsConfig::from_pem(dev.cert_pem.as_bytes(), other.key_pem.as_bytes()).unwrap_err();
        assert!(matches!(mismatch, TlsError::Rustls(_)), "{mismatch}");
        let missing =
            TlsConfig::from_pem_files("/nonexistent/cert.pem", "/nonexistent/key.pem").unwrap_err();
        assert!(
            missing.to_string().contains("/nonexistent/cert.pem"),
            "{missing}"
        );
    }

    #[tokio::test]
    async fn accepted_connections_send_small_writes_at_once() {
        use axum::serve::Listener as _;
        let dev = self_signed(&["127.0.0.1"]).unwrap();
        let tcp = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = tcp.local_addr().unwrap();
        let mut listener = TlsListener::new(tcp, &dev.tls_config().unwrap()).unwrap();
        // The real client's TLS configuration, trusting the certificate.
        let dir = tempfile::tempdir().unwrap();
        let (cert, _) = dev.write_to(dir.path()).unwrap();
        let client = terminalwire_client::connect::tls_config(Some(&cert)).unwrap();
        let connector = tokio_rustls::TlsConnector::from(client);
        let name = rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap();
        let client = tokio::spawn(async move {
            let tcp = TcpStream::connect(addr).await.unwrap();
            connector.connect(name, tcp).await.unwrap()
        });
        let (server_side, _) = listener.accept().await;
        let _client_side = client.await.unwrap();
        let tcp = server_side.get_ref().0;
        assert!(tcp.nodelay().unwrap(), "Nagle's algorithm is still on");
        // What `serve_app` does with a TLS connection reaches its socket.
        tcp.set_nodelay(false).unwrap();
        server_side.send_small_writes_at_once();
        assert!(server_side.get_ref().0.nodelay().unwrap());
    }

    #[tokio::test]
    async fn serve_counts_sessions_per_client_address() {
        use crate::terminal::tests::{sessions_per_address, upgrade_status};
        let dev = self_signed(&["127.0.0.1"]).unwrap();
        let tcp = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = tcp.local_addr().unwrap();
        let (_terminal, app) = sessions_per_address(1);
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(serve(tcp, dev.tls_config().unwrap(), app, async move {
            let _ = stopped.await;
        }));
        let dir = tempfile::tempdir().unwrap();
        let (cert, _) = dev.write_to(dir.path()).unwrap();
        let connector = tokio_rustls::TlsConnector::from(
            terminalwire_client::connect::tls_config(Some(&cert)).unwrap(),
        );
        let connect = async || {
            let name = rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap();
            let tcp = TcpStream::connect(addr).await.unwrap();
            connector.connect(name, tcp).await.unwrap()
        };
        // The first session holds the address's only slot while it waits
        // for its handshake.
        let (first, held) = upgrade_status(connect().await).await;
        assert!(first.starts_with("HTTP/1.1 101"), "{first}");
        let (second, _) = upgrade_status(connect().await).await;
        assert!(second.starts_with("HTTP/1.1 429"), "{second}");
        let _ = stop.send(());
        drop(held);
        server.await.unwrap().unwrap();
    }

    #[test]
    fn dev_certificates_are_written_with_a_private_key_file() {
        let dir = std::env::temp_dir().join(format!("terminalwire-tls-{}", std::process::id()));
        let dev = self_signed(&["localhost"]).unwrap();
        let (cert, key) = dev.write_to(&dir).unwrap();
        TlsConfig::from_pem_files(&cert, &key).unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            let mode = std::fs::metadata(&key).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
