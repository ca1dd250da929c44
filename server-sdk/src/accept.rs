//! The SDK's accept loop, used by [`Terminal::serve_app`](crate::Terminal::serve_app)
//! and [`tls::serve`](crate::tls::serve) instead of `axum::serve`: the same
//! HTTP/1 service with upgrades and graceful shutdown, plus a time-out for a
//! request's header. `axum::serve` builds hyper without a timer, which turns
//! hyper's header time-out off: a connection that never sends a request
//! (or sends it a byte a minute) held its task, buffers and socket forever,
//! counted by no session limit. A request's body has a time-out too (see
//! [`BODY_IDLE_TIMEOUT`]), and a shutdown waits for open connections at
//! most [`SHUTDOWN_DRAIN`]. Once 512 HTTP connections are open (not
//! counting those upgraded to sessions), an address (IPv6: its /64) already
//! holding 8 gets no more: each held a descriptor until the header
//! time-out, and one client opening them in a loop took every descriptor
//! the process may open.
//!
//! Many addresses together are bounded by the process's limit on open
//! files: the loop first raises its soft limit to the hard one
//! ([`raise_open_file_limit`]), then takes at most half of it in HTTP
//! connections (counted over all of the process's loops). Past that, a new
//! connection is closed at once, so that the sessions and the app's own
//! files keep the other half however many addresses open connections that
//! send nothing. TLS handshakes come before the HTTP connection and are
//! bounded on their own (1 024 per listener, see [`tls`](crate::tls)).

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::serve::Listener;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tower::ServiceExt as _;

use crate::per_address::PerAddress;

/// How long a client may take to send a request's header, from the moment
/// the connection waits for one (also how long an idle keep-alive
/// connection is kept).
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);

/// How long a handler reading a request's body waits for its next bytes
/// before the body fails: a client that announced a body and sent part of
/// it held its connection forever, and a shutdown waited for it.
pub const BODY_IDLE_TIMEOUT: Duration = Duration::from_secs(30);

/// How long a shutdown waits for open HTTP connections to finish their
/// requests before it returns (upgraded ones are sessions, which end on
/// their own).
pub const SHUTDOWN_DRAIN: Duration = Duration::from_secs(30);

/// How many HTTP connections one address, and all together, may hold at
/// once: a connection counts from its accept until it closes (keep-alive
/// time between requests included) or is upgraded to a session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ConnectionLimits {
    /// Once this many are open, an address already holding
    /// `per_address` gets no more: its next connection is closed at once.
    /// Not before, so that the users behind one NAT (and a browser's
    /// keep-alive connections) may all connect on a server that is not
    /// busy.
    pub(crate) busy: usize,
    /// See `busy`.
    pub(crate) per_address: usize,
    /// Once this many are open, every new connection is closed at once.
    pub(crate) total: usize,
}

impl ConnectionLimits {
    /// The limits of a process that may open `open_files` descriptors
    /// (`None`: no limit): HTTP connections take at most half of them, and
    /// an address is limited from 512 on (or from half the total, when
    /// that is lower).
    pub(crate) fn for_open_files(open_files: Option<u64>) -> ConnectionLimits {
        // No limit at all is rare (root, with RLIM_INFINITY): the kernel's
        // own default ceiling, `fs.nr_open`, stands in for it.
        let open_files = open_files.unwrap_or(OPEN_FILE_CEILING);
        let total = usize::try_from(open_files / 2)
            .unwrap_or(usize::MAX)
            .max(MIN_TOTAL);
        ConnectionLimits {
            busy: 512.min(total / 2),
            per_address: 8,
            total,
        }
    }
}

/// The least [`ConnectionLimits::total`], even under a tiny descriptor
/// limit (a server that cannot open 32 files fails elsewhere first).
const MIN_TOTAL: usize = 16;

/// The highest soft limit on open files [`raise_open_file_limit`] asks
/// for: Linux's default `fs.nr_open`, above which `setrlimit` fails.
const OPEN_FILE_CEILING: u64 = 1 << 20;

/// Raises this process's soft limit on open files (`ulimit -n`) to its hard
/// limit, or to 1 048 576 when the hard limit is higher, as Go's runtime
/// does at start; returns the soft limit in force afterwards (`None`: no
/// limit). [`Terminal::serve_app`](crate::Terminal::serve_app) and
/// [`tls::serve`](crate::tls::serve) call it; an app serving
/// [`Terminal::route`](crate::Terminal::route) with an accept loop of its
/// own may call it at start.
///
/// Each connection and each session holds a descriptor, and the usual soft
/// limit (1 024) is a few hundred users. The hard limit is the
/// administrator's: it is never raised. Child processes the app starts
/// inherit the raised limit (a program that still uses `select(2)` cannot
/// watch descriptors above 1 023). When the limit cannot be raised, it is
/// left as it was.
pub fn raise_open_file_limit() -> Option<u64> {
    use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
    let limit = getrlimit(Resource::Nofile);
    let wanted = limit
        .maximum
        .unwrap_or(OPEN_FILE_CEILING)
        .min(OPEN_FILE_CEILING);
    match limit.current {
        Some(current) if current < wanted => {
            let raised = Rlimit {
                current: Some(wanted),
                maximum: limit.maximum,
            };
            match setrlimit(Resource::Nofile, raised) {
                Ok(()) => {
                    tracing::debug!(from = current, to = wanted, "raised the open-file limit");
                    Some(wanted)
                }
                Err(error) => {
                    tracing::debug!(%error, current, wanted, "cannot raise the open-file limit");
                    Some(current)
                }
            }
        }
        current => current,
    }
}

/// Serves `app` on `listener` until `shutdown` resolves, then waits up to
/// [`SHUTDOWN_DRAIN`] for open connections to finish and returns. Each request carries the peer's address as
/// `ConnectInfo<L::Addr>`.
pub(crate) async fn serve<L>(
    listener: L,
    app: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
) where
    L: Listener,
    L::Addr: Clone + Send + Sync + 'static,
{
    let limits = ConnectionLimits::for_open_files(raise_open_file_limit());
    serve_limited(listener, app, shutdown, limits, in_this_process()).await;
}

/// The HTTP connections open in all of this process's accept loops (two
/// `serve_app` calls, or one and a `tls::serve`, share the total).
fn in_this_process() -> Arc<AtomicUsize> {
    static OPEN: OnceLock<Arc<AtomicUsize>> = OnceLock::new();
    OPEN.get_or_init(Arc::default).clone()
}

/// One connection counted in a total of open connections, until dropped.
struct Counted(Arc<AtomicUsize>);

impl Counted {
    fn new(open: &Arc<AtomicUsize>) -> Counted {
        open.fetch_add(1, Ordering::Relaxed);
        Counted(open.clone())
    }
}

impl Drop for Counted {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// [`serve`], with `limits` on the connections of one address, and on all
/// of them together counted in `counted`.
pub(crate) async fn serve_limited<L>(
    mut listener: L,
    app: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
    limits: ConnectionLimits,
    counted: Arc<AtomicUsize>,
) where
    L: Listener,
    L::Addr: Clone + Send + Sync + 'static,
{
    // Dropped senders tell the connections to close gracefully; every
    // connection holds a receiver, so `closed` waits for them all.
    let (stop, stopped) = tokio::sync::watch::channel(());
    let (open, _) = tokio::sync::watch::channel(());
    // A connection holds its place until it closes or is upgraded (hyper's
    // connection future ends at the upgrade).
    let per_address = PerAddress::default();
    // The total was reached and said so in the log.
    let mut full = false;
    tokio::pin!(shutdown);
    loop {
        let (io, addr) = tokio::select! {
            accepted = listener.accept() => accepted,
            () = &mut shutdown => break,
        };
        // TCP and TLS peers have an IP address; a Unix socket's have none
        // (and are checked by user id).
        let place = match (&addr as &dyn std::any::Any).downcast_ref::<SocketAddr>() {
            Some(peer) => {
                let held = counted.load(Ordering::Relaxed);
                if held >= limits.total {
                    if !full {
                        tracing::warn!(
                            connections = held,
                            "as many HTTP connections open as this process takes (half its \
                             open-file limit); new ones are closed until some end"
                        );
                    }
                    full = true;
                    continue;
                }
                // Logged again once a tenth of the places came free.
                if held < limits.total - limits.total / 10 {
                    full = false;
                }
                let limit = if per_address.held() >= limits.busy {
                    limits.per_address
                } else {
                    usize::MAX
                };
                match per_address.take(peer.ip(), limit) {
                    Some(place) => Some((place, Counted::new(&counted))),
                    None => {
                        tracing::debug!(%peer, "too many connections from this address");
                        continue;
                    }
                }
            }
            None => None,
        };
        let service = app
            .clone()
            .map_request(move |request: axum::http::Request<Incoming>| {
                let mut request = request.map(|body| {
                    Body::new(IdleTimeoutBody {
                        inner: body,
                        waiting: None,
                    })
                });
                request.extensions_mut().insert(ConnectInfo(addr.clone()));
                request
            });
        let service = TowerToHyperService::new(service);
        let mut stopped = stopped.clone();
        let held = open.subscribe();
        tokio::spawn(async move {
            let connection = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_READ_TIMEOUT)
                .serve_connection(TokioIo::new(io), service)
                .with_upgrades();
            tokio::pin!(connection);
            let mut stopping = false;
            loop {
                tokio::select! {
                    result = connection.as_mut() => {
                        if let Err(error) = result {
                            tracing::debug!(%error, "connection ended");
                        }
                        break;
                    }
                    _ = stopped.changed(), if !stopping => {
                        stopping = true;
                        connection.as_mut().graceful_shutdown();
                    }
                }
            }
            drop(held);
            drop(place);
        });
    }
    drop(listener);
    drop(stop);
    if tokio::time::timeout(SHUTDOWN_DRAIN, open.closed())
        .await
        .is_err()
    {
        tracing::warn!(drain = ?SHUTDOWN_DRAIN, "connections still open after the shutdown's drain; leaving them");
    }
}

/// A request body that fails once its reader has waited
/// [`BODY_IDLE_TIMEOUT`] for the next bytes. The clock runs only while the
/// handler waits: one that reads the body late is not cut off.
struct IdleTimeoutBody {
    inner: Incoming,
    /// Since the reader found nothing to read.
    waiting: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl hyper::body::Body for IdleTimeoutBody {
    type Data = bytes::Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<hyper::body::Frame<Self::Data>, Self::Error>>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(frame) => {
                this.waiting = None;
                Poll::Ready(frame.map(|frame| frame.map_err(Into::into)))
            }
            Poll::Pending => {
                let waiting = this
                    .waiting
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep(BODY_IDLE_TIMEOUT)));
                match waiting.as_mut().poll(cx) {
                    Poll::Ready(()) => Poll::Ready(Some(Err(format!(
                        "no byte of the request's body for {BODY_IDLE_TIMEOUT:?}"
                    )
                    .into()))),
                    Poll::Pending => Poll::Pending,
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// Serves a one-route app on a fresh port; its address.
    async fn started() -> std::net::SocketAddr {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let app = Router::new().route("/", axum::routing::get(|| async { "up" }));
        tokio::spawn(serve(listener, app, std::future::pending()));
        addr
    }

    #[tokio::test(start_paused = true)]
    async fn a_connection_that_sends_no_request_is_closed_after_the_header_time_out() {
        let addr = started().await;
        let mut client = tokio::net::TcpStream::connect(addr).await.unwrap();
        let started = tokio::time::Instant::now();
        let mut byte = [0u8; 1];
        // The clock is paused: it jumps to the next timer whenever all
        // tasks wait, so an hour passes at once if nothing closes it.
        let read = tokio::time::timeout(Duration::from_secs(3600), client.read(&mut byte)).await;
        assert!(
            matches!(read, Ok(Ok(0) | Err(_))),
            "still open after an hour: {read:?}"
        );
        assert!(started.elapsed() <= HEADER_READ_TIMEOUT + Duration::from_secs(1));
    }

    #[tokio::test(start_paused = true)]
    async fn a_body_that_stops_coming_ends_its_request_and_holds_no_shutdown() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (entered, mut stuck_entered) = tokio::sync::mpsc::unbounded_channel::<()>();
        let app = Router::new()
            .route(
                "/form",
                axum::routing::post(|body: String| async move { body.len().to_string() }),
            )
            .route(
                "/stuck",
                axum::routing::get(move || async move {
                    let _ = entered.send(());
                    std::future::pending::<&'static str>().await
                }),
            );
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(serve(listener, app, async move {
            let _ = stopped.await;
        }));
        // Announces 1 000 bytes, sends 2, then nothing. The clock is paused:
        // it jumps to the next timer whenever all tasks wait.
        let mut client = tokio::net::TcpStream::connect(addr).await.unwrap();
        client
            .write_all(b"POST /form HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\nab")
            .await
            .unwrap();
        let started = tokio::time::Instant::now();
        let mut response = Vec::new();
        let read =
            tokio::time::timeout(Duration::from_secs(3600), client.read_to_end(&mut response))
                .await;
        assert!(read.is_ok(), "still open after an hour");
        assert!(started.elapsed() <= BODY_IDLE_TIMEOUT + Duration::from_secs(1));
        let response = String::from_utf8_lossy(&response);
        assert!(!response.starts_with("HTTP/1.1 200"), "{response}");

        // A shutdown waits for a request in progress, but not for ever.
        let mut stuck = tokio::net::TcpStream::connect(addr).await.unwrap();
        stuck
            .write_all(b"GET /stuck HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        stuck_entered.recv().await.unwrap();
        let _ = stop.send(());
        let stopping = tokio::time::Instant::now();
        let finished = tokio::time::timeout(Duration::from_secs(3600), server).await;
        assert!(finished.is_ok(), "serve never returned");
        // The clock is paused: the drain is waited out exactly.
        assert!(
            stopping.elapsed() >= SHUTDOWN_DRAIN,
            "{:?}",
            stopping.elapsed()
        );
        assert!(stopping.elapsed() <= SHUTDOWN_DRAIN + Duration::from_secs(1));
    }

    /// Serves a one-route app on a fresh port with `limits`, counting all
    /// connections in `counted`; its address.
    async fn serving(limits: ConnectionLimits, counted: Arc<AtomicUsize>) -> std::net::SocketAddr {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let app = Router::new().route("/", axum::routing::get(|| async { "up" }));
        tokio::spawn(serve_limited(
            listener,
            app,
            std::future::pending(),
            limits,
            counted,
        ));
        addr
    }

    /// A TCP connection to `addr` from the loopback address `ip`.
    async fn connect_from(ip: [u8; 4], addr: std::net::SocketAddr) -> tokio::net::TcpStream {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.bind((ip, 0).into()).unwrap();
        socket.connect(addr).await.unwrap()
    }

    /// Sends a request for `/` on `client`; the status line of the answer.
    async fn status_of_get(client: &mut tokio::net::TcpStream) -> String {
        let _ = client
            .write_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .await;
        let mut response = Vec::new();
        let _ = client.read_to_end(&mut response).await;
        let response = String::from_utf8_lossy(&response);
        response.lines().next().unwrap_or_default().to_owned()
    }

    #[tokio::test]
    async fn connections_that_send_no_request_hold_no_one_elses_descriptors() {
        // Small limits, so that the test holds few descriptors.
        let limits = ConnectionLimits {
            busy: 8,
            per_address: 2,
            total: 64,
        };
        let addr = serving(limits, Arc::default()).await;
        // More connections that send nothing, from one address, than a busy
        // server lets it hold: each held a descriptor and a task until the
        // header time-out, and enough of them took every descriptor the
        // process may open.
        let mut silent = Vec::new();
        for _ in 0..2 * limits.busy {
            silent.push(connect_from([127, 0, 0, 1], addr).await);
        }
        // The ones beyond its share are closed at once…
        let mut byte = [0u8; 1];
        let beyond = silent.last_mut().unwrap().read(&mut byte).await;
        assert!(matches!(beyond, Ok(0) | Err(_)), "{beyond:?}");
        // …not by the header time-out, which would have closed the first
        // ones before (they are still served)…
        let first = status_of_get(&mut silent[0]).await;
        assert!(first.starts_with("HTTP/1.1 200"), "{first:?}");
        // …and another address is served.
        let mut other = connect_from([127, 0, 0, 2], addr).await;
        let other = status_of_get(&mut other).await;
        assert!(other.starts_with("HTTP/1.1 200"), "{other:?}");
    }

    #[tokio::test]
    async fn many_addresses_together_hold_at_most_the_total() {
        // Each address holds fewer than its share: only the total stops them.
        let limits = ConnectionLimits {
            busy: 64,
            per_address: 8,
            total: 4,
        };
        let addr = serving(limits, Arc::default()).await;
        let mut silent = Vec::new();
        for host in 1..=4 {
            silent.push(connect_from([127, 0, 0, host], addr).await);
        }
        // A fifth address is closed at once, the four are still served…
        let mut fifth = connect_from([127, 0, 0, 5], addr).await;
        let mut byte = [0u8; 1];
        let beyond = fifth.read(&mut byte).await;
        assert!(matches!(beyond, Ok(0) | Err(_)), "{beyond:?}");
        let first = status_of_get(&mut silent[0]).await;
        assert!(first.starts_with("HTTP/1.1 200"), "{first:?}");
        // …and the place of the one that ended is free again (the runtime
        // has one thread: the server freed it before the answer's end was
        // seen).
        let mut sixth = connect_from([127, 0, 0, 6], addr).await;
        let sixth = status_of_get(&mut sixth).await;
        assert!(sixth.starts_with("HTTP/1.1 200"), "{sixth:?}");
    }

    #[tokio::test]
    async fn two_accept_loops_share_the_total() {
        let limits = ConnectionLimits {
            busy: 64,
            per_address: 8,
            total: 4,
        };
        let counted = Arc::new(AtomicUsize::new(0));
        let addrs = [
            serving(limits, counted.clone()).await,
            serving(limits, counted.clone()).await,
        ];
        let mut silent = Vec::new();
        for host in 1..=4u8 {
            let mut client = connect_from([127, 0, 0, host], addrs[usize::from(host % 2)]).await;
            // Served, so counted before the next one comes.
            client
                .write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
                .await
                .unwrap();
            let mut answer = [0u8; 12];
            client.read_exact(&mut answer).await.unwrap();
            silent.push(client);
        }
        // Each loop holds two: a fifth, to either, is closed at once.
        for addr in addrs {
            let mut fifth = connect_from([127, 0, 0, 5], addr).await;
            let status = status_of_get(&mut fifth).await;
            assert!(status.is_empty(), "served: {status:?}");
        }
    }

    #[test]
    fn http_connections_take_at_most_half_the_open_files() {
        let limits = |open_files| {
            let limits = ConnectionLimits::for_open_files(open_files);
            (limits.busy, limits.per_address, limits.total)
        };
        assert_eq!(limits(Some(20_000)), (512, 8, 10_000));
        assert_eq!(limits(Some(1024)), (256, 8, 512));
        assert_eq!(limits(None), (512, 8, 1 << 19));
        assert_eq!(limits(Some(0)), (8, 8, MIN_TOTAL));
    }

    /// Set in the child process of
    /// `the_soft_open_file_limit_is_raised_to_the_hard_one`.
    const RAISE_CHILD: &str = "TERMINALWIRE_TEST_RAISE_CHILD";

    #[test]
    fn the_soft_open_file_limit_is_raised_to_the_hard_one() {
        use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
        let name = "accept::tests::the_soft_open_file_limit_is_raised_to_the_hard_one";
        if std::env::var_os(RAISE_CHILD).is_none() {
            // In a process of its own: the limit is the whole process's.
            let child = std::process::Command::new(std::env::current_exe().unwrap())
                .args(["--exact", name, "--test-threads=1", "--nocapture"])
                .env(RAISE_CHILD, "1")
                .output()
                .unwrap();
            let stdout = String::from_utf8_lossy(&child.stdout);
            assert!(
                child.status.success() && stdout.contains("1 passed"),
                "{stdout}{}",
                String::from_utf8_lossy(&child.stderr)
            );
            return;
        }
        let hard = getrlimit(Resource::Nofile).maximum;
        let wanted = hard.unwrap_or(OPEN_FILE_CEILING).min(OPEN_FILE_CEILING);
        assert!(wanted > 64, "a hard limit too low to test: {hard:?}");
        setrlimit(
            Resource::Nofile,
            Rlimit {
                current: Some(64),
                maximum: hard,
            },
        )
        .unwrap();
        assert_eq!(raise_open_file_limit(), Some(wanted));
        let limit = getrlimit(Resource::Nofile);
        assert_eq!((limit.current, limit.maximum), (Some(wanted), hard));
    }

    #[tokio::test]
    async fn a_request_is_served_with_the_peers_address() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let app = Router::new().route(
            "/",
            axum::routing::get(
                |ConnectInfo(peer): ConnectInfo<std::net::SocketAddr>| async move {
                    peer.ip().to_string()
                },
            ),
        );
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(serve(listener, app, async move {
            let _ = stopped.await;
        }));
        let mut client = tokio::net::TcpStream::connect(addr).await.unwrap();
        client
            .write_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut response = String::new();
        client.read_to_string(&mut response).await.unwrap();
        assert!(response.starts_with("HTTP/1.1 200"), "{response}");
        assert!(response.ends_with("127.0.0.1"), "{response}");
        let _ = stop.send(());
        server.await.unwrap();
    }
}
