//! [`Terminal`]: the service an app mounts on its axum router.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use std::net::{IpAddr, SocketAddr};

use axum::extract::ConnectInfo;
use axum::extract::ws::WebSocketUpgrade;
use axum::http::{Extensions, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::MethodRouter;
use futures_util::FutureExt;
use terminalwire_protocol::secure::MAX_SEALED_LEN;
use terminalwire_protocol::{DEFAULT_MAX_CHUNK, DEFAULT_WINDOW, MAX_WRITE_BUFFER, SUBPROTOCOL};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::identity::ServerIdentity;
use crate::outcome::Command;
use crate::per_address::PerAddress;
use crate::session;
use crate::transport::{AxumTransport, Transport};

/// Settings of a [`Terminal`]. Start from [`Config::default`].
#[derive(Debug, Clone)]
pub struct Config {
    /// Name the server reports in `welcome`.
    pub server_name: String,
    /// Version the server reports in `welcome`.
    pub server_version: String,
    /// Time a client has, from connecting, to finish the secure handshake
    /// and send its hello (or resume).
    pub handshake_timeout: Duration,
    /// A session with no frame or heartbeat for this long is closed.
    pub idle_timeout: Duration,
    /// On shutdown, how long running commands may take to finish before they
    /// are cancelled.
    pub shutdown_grace: Duration,
    /// Initial credit granted to the client on its streams.
    pub window: u32,
    /// Largest data chunk the server sends and accepts. A client must
    /// accept at least [`Config::MIN_CHUNK`] bytes: a hello announcing a
    /// smaller `max_chunk` is refused (protocol error).
    pub max_chunk: u32,
    /// What an incompatible client is told (default: versions and how to upgrade).
    pub incompatible_message: Option<String>,
    /// The server's identity key, which clients pin. `None`: a random one
    /// per [`Terminal`] (fine for tests; a real deployment loads a stable
    /// one with [`ServerIdentity::load_or_create`]).
    pub identity: Option<ServerIdentity>,
    /// Most sessions at once; more upgrades get 503.
    pub max_sessions: usize,
    /// Most sessions at once from one IP address; more get 429. The address
    /// is the TCP peer's ([`Terminal::serve_app`] and
    /// [`tls::serve`](crate::tls::serve) pass it; an app calling
    /// `axum::serve` itself passes it with
    /// `into_make_service_with_connect_info::<SocketAddr>()`). Behind a
    /// reverse proxy or load balancer every client has the proxy's address:
    /// there, set 0, which turns this limit off.
    pub max_sessions_per_address: usize,
    /// Size of each connection's WebSocket read buffer (4 KiB). It stays
    /// resident for the connection's life, so it dominates the memory of
    /// idle sessions. A message bigger than it (a file chunk the client
    /// sends) grows the buffer as it arrives, so it does not limit big
    /// uploads: 1 GiB read from the client took as long with 4 KiB as with
    /// 8 KiB (`bench/PROFILE.md`, 2026-11-29, sixth).
    pub read_buffer_size: usize,
    /// Browser origins allowed to open a session (`Origin` header). The
    /// native client sends none; an upgrade from any other web page is
    /// refused, so a malicious page cannot drive a session.
    pub allowed_origins: Vec<String>,
    /// How long a session and its running command wait for a client whose
    /// connection dropped to resume it (clients with the `resume`
    /// capability). Zero turns resuming off. Also how long, once the command
    /// has ended, a connected client has to acknowledge the exit (counted
    /// again from each acknowledgement of more frames, up to ten grace
    /// periods after the end).
    pub resume_grace: Duration,
    /// How long a session the user detached from waits to be re-attached.
    /// Zero turns detaching off.
    pub detach_keep: Duration,
    /// Most bytes of frames a resumable session keeps for replay until the
    /// client acknowledges them; beyond it the command's writes and requests
    /// wait.
    pub replay_limit: usize,
    /// After sending a request with no other in flight, the command's task
    /// polls for the answer this long (at most an hour; yielding to the
    /// runtime each time) before it sleeps, once a request's round trip took
    /// at most three times this: a client on the same host answers in
    /// microseconds, and the two wake-ups a round trip costs otherwise are
    /// most of it there. A round trip that lingering missed turns it off for
    /// the next one, and each further miss for twice as many (up to 64), so
    /// over a network it costs at most this much CPU every few dozen round
    /// trips. Zero: never. Default: `terminalwire_protocol::linger::DEFAULT_BUDGET`
    /// (50 µs).
    pub linger: Duration,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            server_name: "terminalwire-server".into(),
            server_version: env!("CARGO_PKG_VERSION").into(),
            handshake_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            shutdown_grace: Duration::from_secs(10),
            window: DEFAULT_WINDOW,
            max_chunk: DEFAULT_MAX_CHUNK,
            incompatible_message: None,
            identity: None,
            read_buffer_size: 4 * 1024,
            max_sessions: 10_000,
            max_sessions_per_address: 64,
            allowed_origins: Vec::new(),
            resume_grace: Duration::from_secs(120),
            detach_keep: Duration::from_secs(3600),
            replay_limit: 8 * 1024 * 1024,
            linger: terminalwire_protocol::linger::DEFAULT_BUDGET,
        }
    }
}

impl Config {
    /// The longest time a setting means: "forever" as tokio counts it, and
    /// far enough from the end of time that deadlines computed from it never
    /// overflow.
    pub const FOREVER: Duration = Duration::from_secs(30 * 365 * 24 * 3600);
    /// The smallest `max_chunk`, the server's and the client's
    /// ([`terminalwire_protocol::MIN_CHUNK`]): a smaller one would make every
    /// write crawl, and 0 would never move a byte. A hello announcing less
    /// is refused.
    pub const MIN_CHUNK: u32 = terminalwire_protocol::MIN_CHUNK;

    /// Bounds what the app set: [`Config::FOREVER`] for times,
    /// [`Config::MIN_CHUNK`] for chunks.
    fn bound(&mut self) {
        for time in [
            &mut self.handshake_timeout,
            &mut self.idle_timeout,
            &mut self.shutdown_grace,
            &mut self.resume_grace,
            &mut self.detach_keep,
            &mut self.linger,
        ] {
            *time = (*time).min(Self::FOREVER);
        }
        self.max_chunk = self.max_chunk.max(Self::MIN_CHUNK);
    }
}

/// A remote command-line interface, ready to mount on an axum router.
///
/// Cheap to clone. Keep a clone to [`shut down`](Terminal::shutdown) gracefully.
#[derive(Clone)]
pub struct Terminal {
    inner: Arc<Inner>,
}

struct Inner {
    command: Arc<dyn Command>,
    config: Arc<Config>,
    shutdown: CancellationToken,
    sessions: TaskTracker,
    next_session: AtomicU64,
    per_address: PerAddress,
    /// Sessions that can be resumed on a new connection.
    resumable: Arc<session::Registry>,
    /// Distinguishes this process's session ids from another's.
    instance: u64,
    /// Upgrades accepted whose session has not started yet: they count
    /// against `max_sessions` from the check on ([`SessionPlace`]).
    reserved: AtomicUsize,
}

/// A place among `max_sessions` taken by an upgrade until its session
/// counts itself (or the upgrade fails). Upgrades that came together all
/// passed a check of the running sessions alone: 2–3 of a burst of 64
/// against a limit of 1.
struct SessionPlace(Arc<Inner>);

impl SessionPlace {
    fn take(inner: &Arc<Inner>) -> Option<SessionPlace> {
        let mut reserved = inner.reserved.load(Ordering::Acquire);
        loop {
            if inner.sessions.len() + reserved >= inner.config.max_sessions {
                return None;
            }
            match inner.reserved.compare_exchange_weak(
                reserved,
                reserved + 1,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => return Some(SessionPlace(inner.clone())),
                Err(now) => reserved = now,
            }
        }
    }
}

impl Drop for SessionPlace {
    fn drop(&mut self) {
        self.0.reserved.fetch_sub(1, Ordering::AcqRel);
    }
}

impl std::fmt::Debug for Terminal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Terminal")
            .field("config", &self.inner.config)
            .finish_non_exhaustive()
    }
}

impl Terminal {
    /// A terminal running `command` for every client, with default settings.
    pub fn new(command: impl Command) -> Self {
        Self::with_config(command, Config::default())
    }

    /// A terminal with explicit settings. Times longer than 30 years
    /// (`Duration::MAX` for "forever") count as 30 years, and `max_chunk`
    /// as at least 1 KiB.
    pub fn with_config(command: impl Command, mut config: Config) -> Self {
        use std::hash::{BuildHasher, Hasher};
        config.bound();
        if config.identity.is_none() {
            match ServerIdentity::generate() {
                Ok(identity) => {
                    tracing::warn!(
                        fingerprint = %identity.fingerprint(),
                        "no server identity configured: using a random one, which clients will refuse after a restart"
                    );
                    config.identity = Some(identity);
                }
                Err(error) => tracing::error!(%error, "cannot generate a server identity"),
            }
        }
        let instance = std::collections::hash_map::RandomState::new()
            .build_hasher()
            .finish();
        Terminal {
            inner: Arc::new(Inner {
                command: Arc::new(command),
                config: Arc::new(config),
                shutdown: CancellationToken::new(),
                sessions: TaskTracker::new(),
                next_session: AtomicU64::new(1),
                per_address: PerAddress::default(),
                resumable: Arc::default(),
                instance,
                reserved: AtomicUsize::new(0),
            }),
        }
    }

    /// The settings.
    pub fn config(&self) -> &Config {
        &self.inner.config
    }

    /// An axum route serving the terminal endpoint:
    /// `router.route("/terminal", terminal.route())`.
    ///
    /// Sessions count against [`Config::max_sessions_per_address`] when the
    /// request carries the peer's `ConnectInfo<SocketAddr>`: [`serve_app`]
    /// and [`tls::serve`](crate::tls::serve) do that; an app calling
    /// `axum::serve` itself passes
    /// `app.into_make_service_with_connect_info::<SocketAddr>()`.
    ///
    /// [`serve_app`]: Terminal::serve_app
    pub fn route<S: Clone + Send + Sync + 'static>(&self) -> MethodRouter<S> {
        let terminal = self.clone();
        axum::routing::get(
            move |peer: Option<axum::Extension<ConnectInfo<SocketAddr>>>,
                  headers: HeaderMap,
                  upgrade: WebSocketUpgrade| {
                let terminal = terminal.clone();
                async move {
                    let peer = peer.map(|axum::Extension(ConnectInfo(addr))| addr.ip());
                    terminal.upgrade_from(upgrade, &headers, peer)
                }
            },
        )
    }

    /// Answers a WebSocket upgrade request (for apps that write their own
    /// handler; pass the request's headers so the `Origin` check runs).
    pub fn upgrade(&self, upgrade: WebSocketUpgrade, headers: &HeaderMap) -> Response {
        self.upgrade_from(upgrade, headers, None)
    }

    /// [`upgrade`](Terminal::upgrade) for a client at `peer`, which counts
    /// against [`Config::max_sessions_per_address`].
    pub fn upgrade_from(
        &self,
        upgrade: WebSocketUpgrade,
        headers: &HeaderMap,
        peer: Option<IpAddr>,
    ) -> Response {
        self.upgrade_with(upgrade, headers, peer, Extensions::new())
    }

    /// [`upgrade_from`](Terminal::upgrade_from), handing the session
    /// `extensions`: values of the app's from this request (its peer
    /// address, a header, what the app's middleware found) that the command
    /// reads with [`Context::extension`](crate::Context::extension). They
    /// are the ones of the connection that starts the session; a connection
    /// that resumes one does not change them.
    ///
    /// ```no_run
    /// use std::net::SocketAddr;
    /// use axum::extract::{ConnectInfo, WebSocketUpgrade};
    /// use axum::http::{Extensions, HeaderMap};
    /// use axum::routing::get;
    /// use terminalwire_server::{Context, Terminal};
    ///
    /// /// What the command may know of the request that started it.
    /// #[derive(Clone)]
    /// struct Upgrade {
    ///     peer: SocketAddr,
    ///     user_agent: Option<String>,
    /// }
    ///
    /// let terminal = Terminal::new(|ctx: Context| async move {
    ///     let upgrade = ctx.extension::<Upgrade>().expect("set by the route");
    ///     ctx.stdout().println(format!("from {}", upgrade.peer)).await
    /// });
    /// let handler = terminal.clone();
    /// let route = get(
    ///     move |ConnectInfo(peer): ConnectInfo<SocketAddr>,
    ///           headers: HeaderMap,
    ///           upgrade: WebSocketUpgrade| async move {
    ///         let user_agent = headers
    ///             .get("user-agent")
    ///             .and_then(|value| value.to_str().ok())
    ///             .map(str::to_owned);
    ///         let mut extensions = Extensions::new();
    ///         extensions.insert(Upgrade { peer, user_agent });
    ///         handler.upgrade_with(upgrade, &headers, Some(peer.ip()), extensions)
    ///     },
    /// );
    /// let app: axum::Router = axum::Router::new().route("/terminal", route);
    /// ```
    pub fn upgrade_with(
        &self,
        upgrade: WebSocketUpgrade,
        headers: &HeaderMap,
        peer: Option<IpAddr>,
        extensions: Extensions,
    ) -> Response {
        // A browser always sends Origin; the native client never does. A page
        // the app did not list must not open a session (cross-site WebSocket
        // hijacking).
        if let Some(origin) = headers.get(axum::http::header::ORIGIN) {
            let allowed = origin.to_str().is_ok_and(|origin| {
                self.inner
                    .config
                    .allowed_origins
                    .iter()
                    .any(|allowed| allowed.eq_ignore_ascii_case(origin))
            });
            if !allowed {
                // The client's text: cut short, escaped.
                let origin = session::said(&String::from_utf8_lossy(origin.as_bytes()));
                tracing::warn!(%origin, "refused a WebSocket upgrade from a web page");
                return (
                    StatusCode::FORBIDDEN,
                    "this terminal endpoint does not accept sessions from web pages\n",
                )
                    .into_response();
            }
        }
        if self.inner.shutdown.is_cancelled() {
            return (
                StatusCode::SERVICE_UNAVAILABLE,
                "the server is shutting down\n",
            )
                .into_response();
        }
        let upgrade = upgrade
            .protocols([SUBPROTOCOL])
            .max_message_size(MAX_SEALED_LEN)
            .max_frame_size(MAX_SEALED_LEN)
            // A client that pings and reads nothing must not grow it.
            .max_write_buffer_size(MAX_WRITE_BUFFER)
            .read_buffer_size(self.inner.config.read_buffer_size);
        if upgrade.selected_protocol().is_none() {
            let message = format!(
                "this endpoint speaks the `{SUBPROTOCOL}` WebSocket subprotocol; run it with the terminalwire client\n"
            );
            return (StatusCode::BAD_REQUEST, message).into_response();
        }
        let Some(place) = SessionPlace::take(&self.inner) else {
            tracing::warn!(
                limit = self.inner.config.max_sessions,
                "session limit reached"
            );
            return (
                StatusCode::SERVICE_UNAVAILABLE,
                "too many sessions; try again later\n",
            )
                .into_response();
        };
        let slot = match peer.filter(|_| self.inner.config.max_sessions_per_address > 0) {
            Some(ip) => match self
                .inner
                .per_address
                .take(ip, self.inner.config.max_sessions_per_address)
            {
                Some(slot) => Some(slot),
                None => {
                    tracing::warn!(%ip, "per-address session limit reached");
                    return (
                        StatusCode::TOO_MANY_REQUESTS,
                        "too many sessions from your address; try again later\n",
                    )
                        .into_response();
                }
            },
            None => None,
        };
        let terminal = self.clone();
        upgrade.on_upgrade(move |socket| {
            // The session's future is built here, and not wrapped in another
            // `async` block that would hold the socket and a second copy of
            // it: the task lives as long as the session, idle or not.
            let session = terminal.session(AxumTransport(socket), extensions);
            // The session counts itself now.
            drop(place);
            session.map(move |()| drop(slot))
        })
    }

    /// Serves `app` (which mounts this terminal) on `listener` until
    /// `shutdown` resolves, then stops taking sessions and lets running
    /// commands finish within the grace period, after which they are
    /// cancelled ([`shutdown`](Self::shutdown)); sessions that still have
    /// not ended a few seconds later are logged as a warning and left.
    ///
    /// Any axum listener whose connections implement [`TerminalConnection`]
    /// works: TCP and Unix listeners,
    /// [`LocalListener`](crate::local::LocalListener), the SDK's
    /// [`TlsListener`](crate::tls::TlsListener), and any of these wrapped by
    /// `axum::serve::ListenerExt::tap_io`. Each accepted connection is tuned
    /// with [`TerminalConnection::send_small_writes_at_once`] first. For other
    /// connection types, call `axum::serve` yourself and set `TCP_NODELAY`.
    ///
    /// It raises the process's soft limit on open files first
    /// ([`accept::raise_open_file_limit`](crate::accept::raise_open_file_limit)),
    /// and keeps HTTP connections to half of it (see [`accept`](crate::accept)).
    pub async fn serve_app<L>(
        &self,
        listener: L,
        app: axum::Router,
        shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()>
    where
        L: axum::serve::Listener,
        L::Io: TerminalConnection,
        L::Addr: std::fmt::Debug + Clone + Send + Sync + 'static,
    {
        use axum::serve::ListenerExt;
        let draining = self.clone();
        let listener = listener.tap_io(|connection| connection.send_small_writes_at_once());
        // With the peer's address on each request, so that `route` counts
        // sessions per address (TCP and TLS; a Unix socket has none), and a
        // time-out for each request's header.
        crate::accept::serve(listener, app, async move {
            shutdown.await;
            draining.begin_shutdown();
        })
        .await;
        if !self.shutdown().await {
            tracing::warn!(
                sessions = self.session_count(),
                "sessions still running after the shutdown grace period and its margin; leaving them"
            );
        }
        Ok(())
    }

    /// Runs one session over any transport, until it ends.
    ///
    /// The session counts from this call (in [`session_count`](Self::session_count),
    /// and for [`shutdown`](Self::shutdown)), not from the first poll of the
    /// returned future: await it at once, or drop it.
    pub fn serve<T: Transport>(&self, transport: T) -> impl Future<Output = ()> + Send + use<T> {
        self.session(transport, Extensions::new())
    }

    /// [`serve`](Terminal::serve), handing the session `extensions`, which
    /// the command reads with [`Context::extension`](crate::Context::extension)
    /// (see [`upgrade_with`](Terminal::upgrade_with)).
    pub fn serve_with<T: Transport>(
        &self,
        transport: T,
        extensions: Extensions,
    ) -> impl Future<Output = ()> + Send + use<T> {
        self.session(transport, extensions)
    }

    /// [`serve`](Terminal::serve), built at once: the future holds the
    /// halves of the transport, not the transport (idle sessions pay for
    /// every byte of it).
    fn session<T: Transport>(
        &self,
        transport: T,
        extensions: Extensions,
    ) -> impl Future<Output = ()> + Send + use<T> {
        let inner = &self.inner;
        let number = inner.next_session.fetch_add(1, Ordering::Relaxed);
        let session_id = format!("{:08x}-{number}", inner.instance as u32);
        let (writer, reader) = transport.split();
        let session = session::run(
            writer,
            reader,
            inner.command.clone(),
            inner.config.clone(),
            inner.shutdown.clone(),
            session_id,
            inner.resumable.clone(),
            extensions,
        );
        inner.sessions.track_future(session)
    }

    /// Begins a graceful shutdown: new sessions are refused, connections
    /// still in their handshake are closed, running commands see
    /// [`Context::shutdown_requested`](crate::Context::shutdown_requested)
    /// and have the configured grace period to finish.
    pub fn begin_shutdown(&self) {
        self.inner.shutdown.cancel();
        self.inner.sessions.close();
    }

    /// Shuts down gracefully and waits until every session has ended, or until
    /// the grace period plus a margin for the final frames has passed. Returns
    /// whether every session ended.
    pub async fn shutdown(&self) -> bool {
        self.begin_shutdown();
        let bound = self.inner.config.shutdown_grace + Duration::from_secs(6);
        tokio::time::timeout(bound, self.inner.sessions.wait())
            .await
            .is_ok()
    }

    /// Sessions currently running (connections in their handshake
    /// included; sessions waiting for their client to resume too).
    pub fn session_count(&self) -> usize {
        self.inner.sessions.len()
    }

    /// Running sessions that a client can resume (connected or not).
    pub fn resumable_count(&self) -> usize {
        self.inner.resumable.len()
    }
}

/// Resolves on SIGINT or SIGTERM: the usual `shutdown` future for
/// [`Terminal::serve_app`] in an app's `main`.
pub async fn shutdown_signal() {
    let interrupt = tokio::signal::ctrl_c();
    let mut terminate =
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(terminate) => terminate,
            Err(_) => {
                let _ = interrupt.await;
                return;
            }
        };
    tokio::select! {
        _ = interrupt => {}
        _ = terminate.recv() => {}
    }
    tracing::info!("shutdown signal received");
}

/// A connection that carries terminal sessions, which [`Terminal::serve_app`]
/// tunes as it accepts it.
///
/// A session sends small frames (a line of output, a prompt, an exit status)
/// that must leave at once. On TCP, Nagle's algorithm holds a small write back
/// until the peer acknowledges the previous one, and the peer delays its
/// acknowledgements: on Linux that costs about 40 ms per command (measured: a
/// one-line command took 4 ms with `TCP_NODELAY` and 40–50 ms without). An app
/// that calls `axum::serve` itself should set `TCP_NODELAY` on accepted
/// connections (`axum::serve::ListenerExt::tap_io`); a custom listener's
/// own connection type implements this trait to be served by `serve_app`.
/// Methods added later will have a default body.
pub trait TerminalConnection {
    /// Makes small writes leave at once (`TCP_NODELAY` on TCP; nothing to do
    /// on a Unix socket). Failures are logged, never fatal.
    fn send_small_writes_at_once(&self);
}

impl TerminalConnection for tokio::net::TcpStream {
    fn send_small_writes_at_once(&self) {
        if let Err(error) = self.set_nodelay(true) {
            tracing::debug!(%error, "cannot set TCP_NODELAY on a connection");
        }
    }
}

impl TerminalConnection for tokio::net::UnixStream {
    fn send_small_writes_at_once(&self) {}
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A TCP listener that hands the test a second handle to each socket it
    /// accepts, to look at the socket's options from outside the server.
    struct WatchedListener {
        inner: tokio::net::TcpListener,
        accepted: tokio::sync::mpsc::UnboundedSender<std::net::TcpStream>,
    }

    impl axum::serve::Listener for WatchedListener {
        type Io = tokio::net::TcpStream;
        type Addr = SocketAddr;

        async fn accept(&mut self) -> (Self::Io, Self::Addr) {
            let (stream, peer) = self.inner.accept().await.unwrap();
            let stream = stream.into_std().unwrap();
            let _ = self.accepted.send(stream.try_clone().unwrap());
            (tokio::net::TcpStream::from_std(stream).unwrap(), peer)
        }

        fn local_addr(&self) -> std::io::Result<Self::Addr> {
            self.inner.local_addr()
        }
    }

    #[tokio::test]
    async fn serve_app_sends_small_writes_at_once_on_every_connection() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let inner = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = inner.local_addr().unwrap();
        let (accepted, mut sockets) = tokio::sync::mpsc::unbounded_channel();
        let terminal = Terminal::new(|_ctx: crate::Context| async { Ok::<(), anyhow::Error>(()) });
        let app = axum::Router::new().route("/", axum::routing::get(|| async { "up" }));
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(async move {
            let listener = WatchedListener { inner, accepted };
            terminal
                .serve_app(listener, app, async move {
                    let _ = stopped.await;
                })
                .await
        });
        for _ in 0..2 {
            let mut client = tokio::net::TcpStream::connect(addr).await.unwrap();
            client
                .write_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                .await
                .unwrap();
            let mut response = Vec::new();
            client.read_to_end(&mut response).await.unwrap();
            assert!(response.starts_with(b"HTTP/1.1 200"), "{response:?}");
            // Served, so the connection was tuned before.
            let socket = sockets.recv().await.unwrap();
            assert!(socket.nodelay().unwrap(), "Nagle's algorithm is still on");
        }
        let _ = stop.send(());
        server.await.unwrap().unwrap();
    }

    /// Sends a WebSocket upgrade for `/terminal` on `client`; the status
    /// line of the answer, and the connection (kept open by the caller).
    pub(crate) async fn upgrade_status<S>(mut client: S) -> (String, S)
    where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    {
        use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
        let request = format!(
            "GET /terminal HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
             Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
             Sec-WebSocket-Protocol: {SUBPROTOCOL}\r\n\r\n"
        );
        client.write_all(request.as_bytes()).await.unwrap();
        let mut status = String::new();
        BufReader::new(&mut client)
            .read_line(&mut status)
            .await
            .unwrap();
        (status.trim_end().to_owned(), client)
    }

    /// A terminal that allows `limit` sessions per client address, mounted
    /// at `/terminal` of an app.
    pub(crate) fn sessions_per_address(limit: usize) -> (Terminal, axum::Router) {
        let config = Config {
            max_sessions_per_address: limit,
            ..Config::default()
        };
        let terminal = Terminal::with_config(
            |_ctx: crate::Context| async { Ok::<(), anyhow::Error>(()) },
            config,
        );
        let app = axum::Router::new().route("/terminal", terminal.route());
        (terminal, app)
    }

    async fn connect(addr: std::net::SocketAddr) -> tokio::net::TcpStream {
        tokio::net::TcpStream::connect(addr).await.unwrap()
    }

    /// Serves `app` of `terminal` with `serve_app` on a fresh port: its
    /// address, the sender that stops it, and the serving task.
    async fn serving(
        terminal: Terminal,
        app: axum::Router,
    ) -> (
        std::net::SocketAddr,
        tokio::sync::oneshot::Sender<()>,
        tokio::task::JoinHandle<std::io::Result<()>>,
    ) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(async move {
            terminal
                .serve_app(listener, app, async move {
                    let _ = stopped.await;
                })
                .await
        });
        (addr, stop, server)
    }

    /// Every field of every log event, as text.
    #[derive(Clone, Default)]
    struct LoggedFields(Arc<std::sync::Mutex<Vec<String>>>);

    impl tracing::field::Visit for LoggedFields {
        fn record_debug(&mut self, _: &tracing::field::Field, value: &dyn std::fmt::Debug) {
            self.0.lock().unwrap().push(format!("{value:?}"));
        }
    }

    impl tracing::Subscriber for LoggedFields {
        fn enabled(&self, _: &tracing::Metadata<'_>) -> bool {
            true
        }
        fn new_span(&self, span: &tracing::span::Attributes<'_>) -> tracing::span::Id {
            span.record(&mut self.clone());
            tracing::span::Id::from_u64(1)
        }
        fn record(&self, _: &tracing::span::Id, values: &tracing::span::Record<'_>) {
            values.record(&mut self.clone());
        }
        fn record_follows_from(&self, _: &tracing::span::Id, _: &tracing::span::Id) {}
        fn event(&self, event: &tracing::Event<'_>) {
            event.record(&mut self.clone());
        }
        fn enter(&self, _: &tracing::span::Id) {}
        fn exit(&self, _: &tracing::span::Id) {}
    }

    /// The `Origin` of a refused upgrade is the client's text: logged cut
    /// short, as the session logs what a client says. It went into a
    /// warning whole, hundreds of kilobytes a request, with no session
    /// (nor its limits) needed.
    #[tokio::test(flavor = "current_thread")]
    async fn a_refused_origin_is_logged_short() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let logged = LoggedFields::default();
        let _guard = tracing::subscriber::set_default(logged.clone());
        let (terminal, app) = sessions_per_address(0);
        let (addr, _stop, _server) = serving(terminal, app).await;
        let origin = format!("https://{}.example", "a".repeat(300_000));
        let request = format!(
            "GET /terminal HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
             Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
             Sec-WebSocket-Protocol: {SUBPROTOCOL}\r\nOrigin: {origin}\r\n\r\n"
        );
        let mut client = connect(addr).await;
        client.write_all(request.as_bytes()).await.unwrap();
        let mut status = [0u8; 12];
        client.read_exact(&mut status).await.unwrap();
        assert_eq!(&status, b"HTTP/1.1 403");
        let fields = logged.0.lock().unwrap();
        assert!(
            fields.iter().any(|field| field.contains("https://aaaa")),
            "the origin is logged: {} fields",
            fields.len()
        );
        for field in fields.iter() {
            assert!(field.len() < 4096, "a log field of {} bytes", field.len());
        }
    }

    #[tokio::test]
    async fn a_limit_of_zero_sessions_per_address_is_no_limit() {
        let (terminal, app) = sessions_per_address(0);
        let (addr, _stop, _) = serving(terminal, app).await;
        let (first, _held) = upgrade_status(connect(addr).await).await;
        let (second, _) = upgrade_status(connect(addr).await).await;
        assert!(first.starts_with("HTTP/1.1 101"), "{first}");
        assert!(second.starts_with("HTTP/1.1 101"), "{second}");
    }

    #[tokio::test]
    async fn serve_app_counts_sessions_per_client_address() {
        let (terminal, app) = sessions_per_address(1);
        let (addr, stop, server) = serving(terminal, app).await;
        // The first session holds the address's only slot while it waits
        // for its handshake.
        let (first, held) = upgrade_status(connect(addr).await).await;
        assert!(first.starts_with("HTTP/1.1 101"), "{first}");
        let (second, _) = upgrade_status(connect(addr).await).await;
        assert!(second.starts_with("HTTP/1.1 429"), "{second}");
        let _ = stop.send(());
        drop(held);
        server.await.unwrap().unwrap();
    }
}
