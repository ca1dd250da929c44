//! Serving an app over TLS (`wss://`), and development certificates.
//!
//! TLS is rustls with the *aws-lc-rs* crypto provider, used explicitly (no
//! process-wide default provider is needed or installed). [`serve`] serves
//! the app with the SDK's accept loop, exactly like the plain path, over a
//! [`TlsListener`] that wraps a TCP listener and hands over connections
//! once their TLS handshake is done (handshakes run concurrently, each
//! bounded by [`HANDSHAKE_TIMEOUT`], so a slow client never blocks others;
//! a full server makes room by closing a waiting one of the address that
//! holds the most).
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
//! `localhost` and `127.0.0.1`, and [`DevCertificate::load_or_create`] keeps
//! one in a folder across restarts (made once, whole, the key private from
//! the start); clients trust it with
//! `terminalwire --ca-cert dev-cert.pem wss://...`.

use std::collections::VecDeque;
use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use rustls::ServerConfig;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::task::{AbortHandle, JoinSet};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;

use crate::per_address::{AddressSlot, PerAddress};
use crate::terminal::TerminalConnection;

/// How long a client may take to complete its TLS handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// How many TLS handshakes may wait for their client at once.
#[derive(Debug, Clone, Copy)]
struct HandshakeLimits {
    /// At most this many wait for their client at once; a connection
    /// beyond makes room by closing the longest waiting handshake of the
    /// address holding the most. Without that, enough silent connections
    /// kept everyone else in the kernel's queue for [`HANDSHAKE_TIMEOUT`],
    /// and again as they were reopened; closing the oldest of all instead
    /// let a flood of new connections close real clients' handshakes.
    total: usize,
    /// Once half the slots are taken, an address (IPv6: one /64) already
    /// holding this many gets no more: its next connection is closed at
    /// once. Not before, so that the users behind one NAT may all connect
    /// at the same moment on a server that is not busy.
    per_address: usize,
}

impl HandshakeLimits {
    const DEFAULT: HandshakeLimits = HandshakeLimits {
        total: 1024,
        per_address: 8,
    };
}

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
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
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
        Self::with_limits(listener, config, HandshakeLimits::DEFAULT)
    }

    fn with_limits(
        listener: TcpListener,
        config: &TlsConfig,
        limits: HandshakeLimits,
    ) -> io::Result<Self> {
        let local_addr = listener.local_addr()?;
        let (sender, ready) = mpsc::channel(16);
        let acceptor = TlsAcceptor::from(config.config.clone());
        let task = tokio::spawn(accept_loop(listener, acceptor, sender, limits));
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

/// A handshake in [`accept_loop`]'s queue, oldest first.
struct Waiting {
    /// The client's address group (IPv6: its /64).
    group: IpAddr,
    task: AbortHandle,
    /// Its place in the count of its address group, shared with the task:
    /// given up once the handshake is done (the connection then waits only
    /// for the server to take it, and is never closed to make room), or at
    /// once when it is closed to make room (an aborted task is dropped
    /// later, and the counts must not wait for that).
    place: Arc<Mutex<Option<AddressSlot>>>,
}

impl Waiting {
    fn waiting_for_client(&self) -> bool {
        !self.task.is_finished() && lock(&self.place).is_some()
    }
}

fn lock(place: &Mutex<Option<AddressSlot>>) -> std::sync::MutexGuard<'_, Option<AddressSlot>> {
    place
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Closes the handshake that has waited longest among those of the address
/// group holding the most (else the oldest of all), to make room: a flood
/// of connections then closes its own before anyone else's.
fn make_room(queue: &mut VecDeque<Waiting>, per_address: &PerAddress) {
    let busiest = per_address.busiest();
    let index = busiest
        .and_then(|group| {
            queue
                .iter()
                .position(|waiting| waiting.group == group && waiting.waiting_for_client())
        })
        .or_else(|| queue.iter().position(Waiting::waiting_for_client));
    if let Some(waiting) = index.and_then(|index| queue.remove(index)) {
        tracing::debug!(group = %waiting.group, "closed a waiting TLS handshake to make room");
        lock(&waiting.place).take();
        waiting.task.abort();
    }
}

async fn accept_loop(
    listener: TcpListener,
    acceptor: TlsAcceptor,
    ready: mpsc::Sender<(TlsStream<TcpStream>, SocketAddr)>,
    limits: HandshakeLimits,
) {
    let mut handshakes = JoinSet::new();
    // The handshakes in the order they began (finished ones are skipped,
    // and dropped in bulk).
    let mut queue: VecDeque<Waiting> = VecDeque::new();
    // A handshake holds its place until it is done, fails or is closed.
    let per_address = PerAddress::default();
    loop {
        tokio::select! {
            Some(_) = handshakes.join_next(), if !handshakes.is_empty() => {}
            accepted = listener.accept() => {
                let (stream, peer) = match accepted {
                    Ok(accepted) => accepted,
                    Err(error) => {
                        accept_error(error).await;
                        continue;
                    }
                };
                let running = per_address.held();
                let limit = if running >= limits.total / 2 {
                    limits.per_address
                } else {
                    usize::MAX
                };
                let Some(place) = per_address.take(peer.ip(), limit) else {
                    tracing::debug!(%peer, "too many TLS handshakes from this address");
                    continue;
                };
                if running >= limits.total {
                    make_room(&mut queue, &per_address);
                }
                if queue.len() > 2 * limits.total {
                    queue.retain(Waiting::waiting_for_client);
                }
                // Before the handshake, whose flights are small writes too.
                stream.send_small_writes_at_once();
                let acceptor = acceptor.clone();
                let ready = ready.clone();
                let group = place.group();
                let place = Arc::new(Mutex::new(Some(place)));
                let task = handshakes.spawn({
                    let place = Arc::clone(&place);
                    async move {
                        match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                            Ok(Ok(stream)) => {
                                lock(&place).take();
                                // A server that takes no connection for as
                                // long gets none: done handshakes must not
                                // pile up.
                                let taken = ready.send((stream, peer));
                                if tokio::time::timeout(HANDSHAKE_TIMEOUT, taken).await.is_err() {
                                    tracing::debug!(%peer, "TLS connection not taken in time");
                                }
                            }
                            Ok(Err(error)) => {
                                tracing::debug!(%peer, "TLS handshake failed: {error}");
                            }
                            Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
                        }
                    }
                });
                queue.push_back(Waiting { group, task, place });
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
/// up to [`SHUTDOWN_DRAIN`](crate::accept::SHUTDOWN_DRAIN) for open
/// connections to close. Like [`Terminal::serve_app`](crate::Terminal::serve_app),
/// it raises the process's soft limit on open files and keeps HTTP
/// connections to half of it (see [`accept`](crate::accept)).
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

    /// The development certificate kept in `dir`, or a new one for `names`
    /// (host names and IP addresses) when there is none, with the paths of
    /// [`DEV_CERT_FILE`] and [`DEV_KEY_FILE`].
    ///
    /// Each file is made once, whole, and never replaced: the key (readable
    /// by its owner only from the start) first, then a certificate for it.
    /// Servers starting at once on the same folder all end up with the same
    /// key and certificate, and a server that stopped between the two makes
    /// the certificate for the key it left. A certificate already there is
    /// used as it is, whatever names it was made for (delete the folder's
    /// files to make a new one); files that are not a matching certificate
    /// and key are an error naming them, never replaced.
    pub fn load_or_create<S: AsRef<str>>(
        dir: impl AsRef<Path>,
        names: &[S],
    ) -> Result<(DevCertificate, PathBuf, PathBuf), TlsError> {
        let dir = dir.as_ref();
        let (cert, key) = (dir.join(DEV_CERT_FILE), dir.join(DEV_KEY_FILE));
        let key_pem = match read_if_there(&key)? {
            Some(pem) => pem,
            None => create_once(&key, rcgen::KeyPair::generate()?.serialize_pem(), 0o600)?,
        };
        let cert_pem = match read_if_there(&cert)? {
            Some(pem) => pem,
            None => {
                let key_pair = rcgen::KeyPair::from_pem(&key_pem).map_err(|error| {
                    TlsError::Pem(format!(
                        "{}: not a usable private key: {error}",
                        key.display()
                    ))
                })?;
                create_once(&cert, certificate_for(names, &key_pair)?, 0o644)?
            }
        };
        // Files another program left must still be a certificate and its key.
        TlsConfig::from_pem_named(
            cert_pem.as_bytes(),
            &cert.display().to_string(),
            key_pem.as_bytes(),
            &key.display().to_string(),
        )?;
        Ok((DevCertificate { cert_pem, key_pem }, cert, key))
    }

    /// Writes [`DEV_CERT_FILE`] and [`DEV_KEY_FILE`] (the key readable by its
    /// owner only, from the start) into `dir`, creating it, in place of any
    /// there, and returns their paths. Each file is replaced whole: a reader
    /// sees the old one or the new one. To keep one certificate across
    /// restarts, use [`load_or_create`](Self::load_or_create).
    pub fn write_to(&self, dir: impl AsRef<Path>) -> Result<(PathBuf, PathBuf), TlsError> {
        let dir = dir.as_ref();
        let cert = dir.join(DEV_CERT_FILE);
        let key = dir.join(DEV_KEY_FILE);
        let write = |path: &Path, text: &str, mode| {
            crate::files::replace(path, text.as_bytes(), mode).map_err(|source| TlsError::Write {
                path: path.to_owned(),
                source,
            })
        };
        write(&key, &self.key_pem, 0o600)?;
        write(&cert, &self.cert_pem, 0o644)?;
        Ok((cert, key))
    }
}

/// The text of `path`, or `None` when there is no such file.
fn read_if_there(path: &Path) -> Result<Option<String>, TlsError> {
    match std::fs::read_to_string(path) {
        Ok(text) => Ok(Some(text)),
        Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(TlsError::Read {
            path: path.to_owned(),
            source,
        }),
    }
}

/// Makes `path` with `text` unless another server made it first, and gives
/// back what it holds then.
fn create_once(path: &Path, text: String, mode: u32) -> Result<String, TlsError> {
    let made =
        crate::files::write_new(path, text.as_bytes(), mode).map_err(|source| TlsError::Write {
            path: path.to_owned(),
            source,
        })?;
    if made {
        return Ok(text);
    }
    read_if_there(path)?.ok_or_else(|| TlsError::Read {
        path: path.to_owned(),
        source: io::Error::new(
            io::ErrorKind::NotFound,
            "deleted while another server was making it",
        ),
    })
}

/// Generates a self-signed certificate for development, valid for `names`
/// (host names and IP addresses, e.g. `["localhost", "127.0.0.1"]`).
///
/// Clients must be told to trust it (`terminalwire --ca-cert dev-cert.pem`);
/// never use it in production.
pub fn self_signed<S: AsRef<str>>(names: &[S]) -> Result<DevCertificate, TlsError> {
    let key = rcgen::KeyPair::generate()?;
    Ok(DevCertificate {
        cert_pem: certificate_for(names, &key)?,
        key_pem: key.serialize_pem(),
    })
}

/// A self-signed development certificate for `names` and `key`, in PEM.
fn certificate_for<S: AsRef<str>>(names: &[S], key: &rcgen::KeyPair) -> Result<String, TlsError> {
    let names: Vec<String> = names.iter().map(|name| name.as_ref().to_owned()).collect();
    let mut params = rcgen::CertificateParams::new(names)?;
    params.distinguished_name = rcgen::DistinguishedName::new();
    params.distinguished_name.push(
        rcgen::DnType::CommonName,
        "terminalwire development certificate",
    );
    Ok(params.self_signed(key)?.pem())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A client of a test server at `addr` with the certificate `dev`.
    struct TestClient {
        addr: SocketAddr,
        connector: tokio_rustls::TlsConnector,
        _dir: tempfile::TempDir,
    }

    impl TestClient {
        fn new(addr: SocketAddr, dev: &DevCertificate) -> TestClient {
            let dir = tempfile::tempdir().unwrap();
            let (cert, _) = dev.write_to(dir.path()).unwrap();
            let connector = tokio_rustls::TlsConnector::from(
                terminalwire_client::connect::tls_config(Some(&cert)).unwrap(),
            );
            TestClient {
                addr,
                connector,
                _dir: dir,
            }
        }

        /// A TCP connection from loopback address `ip` that never says hello.
        async fn silent_from(&self, ip: [u8; 4]) -> TcpStream {
            let socket = tokio::net::TcpSocket::new_v4().unwrap();
            socket.bind((ip, 0).into()).unwrap();
            socket.connect(self.addr).await.unwrap()
        }

        /// A TLS handshake from loopback address `ip`; fails the test if it
        /// is not done within half the handshake time-out.
        async fn shake_hands_from(&self, ip: [u8; 4]) {
            let tcp = self.silent_from(ip).await;
            let name = rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap();
            let done =
                tokio::time::timeout(HANDSHAKE_TIMEOUT / 2, self.connector.connect(name, tcp))
                    .await;
            assert!(
                matches!(done, Ok(Ok(_))),
                "no handshake from {ip:?}: {done:?}"
            );
        }
    }

    /// Whether the server closed `stream` (waits up to 5 s for it).
    async fn closed(stream: &mut TcpStream) -> bool {
        use tokio::io::AsyncReadExt;
        let mut byte = [0u8; 1];
        let read = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut byte)).await;
        matches!(read, Ok(Ok(0) | Err(_)))
    }

    /// A TLS listener on loopback with `limits`, whose handshakes nobody
    /// takes (16 wait to be taken, more than these tests make).
    async fn listener_with(limits: HandshakeLimits) -> (TlsListener, TestClient) {
        let dev = self_signed(&["127.0.0.1"]).unwrap();
        let tcp = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = TestClient::new(tcp.local_addr().unwrap(), &dev);
        let listener = TlsListener::with_limits(tcp, &dev.tls_config().unwrap(), limits).unwrap();
        (listener, client)
    }

    /// Small limits, so that the tests hold few descriptors.
    const TEST_LIMITS: HandshakeLimits = HandshakeLimits {
        total: 16,
        per_address: 2,
    };

    #[tokio::test]
    async fn connections_that_never_say_hello_hold_no_one_elses_handshake() {
        let (_listener, client) = listener_with(TEST_LIMITS).await;
        // More silent connections from one address than half the slots.
        let mut silent = Vec::new();
        for _ in 0..TEST_LIMITS.total {
            silent.push(client.silent_from([127, 0, 0, 1]).await);
        }
        // Those beyond the address's share are closed at once…
        assert!(
            closed(silent.last_mut().unwrap()).await,
            "a connection beyond the share was kept"
        );
        // …and another machine (here another loopback address) is served.
        client.shake_hands_from([127, 0, 0, 2]).await;
    }

    /// Users behind one NAT share an address: on a server that is not busy
    /// they may all shake hands at once.
    #[tokio::test]
    async fn one_address_may_hold_many_handshakes_while_the_server_is_not_busy() {
        let (_listener, client) = listener_with(TEST_LIMITS).await;
        let mut waiting = Vec::new();
        for _ in 0..5 {
            waiting.push(client.silent_from([127, 0, 0, 1]).await);
        }
        client.shake_hands_from([127, 0, 0, 1]).await;
    }

    /// With every slot taken, a new connection closes a waiting handshake
    /// of the address holding the most (its oldest), not the oldest of all:
    /// a flood from a few addresses closes its own.
    #[tokio::test]
    async fn a_full_server_makes_room_by_closing_a_handshake_of_the_busiest_address() {
        let limits = TEST_LIMITS;
        let (_listener, client) = listener_with(limits).await;
        let mut oldest = Vec::new();
        for _ in 0..limits.per_address {
            oldest.push(client.silent_from([127, 0, 0, 2]).await);
        }
        let mut busiest = Vec::new();
        for _ in limits.per_address..limits.total / 2 {
            busiest.push(client.silent_from([127, 0, 0, 1]).await);
        }
        // Half the slots are taken: this address holds more than its share.
        let mut beyond = client.silent_from([127, 0, 0, 1]).await;
        assert!(
            closed(&mut beyond).await,
            "an address took more than its share"
        );
        let mut others = Vec::new();
        for last in 3..7 {
            for _ in 0..limits.per_address {
                others.push(client.silent_from([127, 0, 0, last]).await);
            }
        }
        // Every slot is taken; someone new is served all the same…
        client.shake_hands_from([127, 0, 0, 7]).await;
        // …in the place of the busiest address's oldest (one is closed in
        // all, so the oldest of all, from another address, was not).
        assert!(
            closed(&mut busiest[0]).await,
            "the busiest address kept its handshakes"
        );
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

    /// Servers starting at once on a fresh folder all serve the one
    /// certificate and key left on disk, which match and are whole (each
    /// made its own and wrote it in place over the others': servers with
    /// different keys, a key file of one and a certificate of another).
    #[test]
    fn starts_at_once_share_one_development_certificate() {
        use std::os::unix::fs::PermissionsExt as _;
        use std::sync::atomic::{AtomicUsize, Ordering};
        const STARTS: usize = 4;
        let root = tempfile::tempdir().unwrap();
        // Many rounds, each on a fresh folder: a barrier's wake-ups are
        // slow enough for one start to be done before the next looks.
        for round in 0..32 {
            let dir = root.path().join(round.to_string());
            let ready = AtomicUsize::new(0);
            let made: Vec<DevCertificate> = std::thread::scope(|scope| {
                let starts: Vec<_> = (0..STARTS)
                    .map(|_| {
                        scope.spawn(|| {
                            ready.fetch_add(1, Ordering::AcqRel);
                            while ready.load(Ordering::Acquire) < STARTS {
                                std::thread::yield_now();
                            }
                            DevCertificate::load_or_create(&dir, &["localhost"])
                                .map(|(dev, _, _)| dev)
                        })
                    })
                    .collect();
                starts
                    .into_iter()
                    .map(|start| start.join().unwrap().unwrap())
                    .collect()
            });
            let (cert, key) = (dir.join(DEV_CERT_FILE), dir.join(DEV_KEY_FILE));
            let on_disk = (
                std::fs::read_to_string(&cert).unwrap(),
                std::fs::read_to_string(&key).unwrap(),
            );
            for dev in &made {
                assert_eq!(
                    (&dev.cert_pem, &dev.key_pem),
                    (&on_disk.0, &on_disk.1),
                    "round {round}"
                );
            }
            TlsConfig::from_pem_files(&cert, &key).unwrap();
            let mode = std::fs::metadata(&key).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
            let left = std::fs::read_dir(&dir).unwrap().count();
            assert_eq!(left, 2, "temporary files left");
            // And the next start serves them too.
            let (again, ..) = DevCertificate::load_or_create(&dir, &["localhost"]).unwrap();
            assert_eq!(again.key_pem, on_disk.1);
        }
    }

    /// A reader of the key file while certificates are written over it
    /// sees one whole key or the other, never an empty or half file (it
    /// was truncated, then written).
    #[test]
    fn a_development_key_written_over_is_never_seen_half_written() {
        let dir = tempfile::tempdir().unwrap();
        let devs = [
            self_signed(&["localhost"]).unwrap(),
            self_signed(&["localhost"]).unwrap(),
        ];
        devs[0].write_to(dir.path()).unwrap();
        let key = dir.path().join(DEV_KEY_FILE);
        let done = std::sync::atomic::AtomicBool::new(false);
        let seen = std::thread::scope(|scope| {
            let reader = scope.spawn(|| {
                let mut seen = 0u64;
                while !done.load(std::sync::atomic::Ordering::Acquire) {
                    let text = std::fs::read_to_string(&key).unwrap();
                    assert!(
                        devs.iter().any(|dev| dev.key_pem == text),
                        "after {seen} reads: {text:?}"
                    );
                    seen += 1;
                }
                seen
            });
            for i in 0..300 {
                devs[i % 2].write_to(dir.path()).unwrap();
            }
            done.store(true, std::sync::atomic::Ordering::Release);
            reader.join()
        });
        assert!(seen.unwrap() > 0);
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
