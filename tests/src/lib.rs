//! Harness for the end-to-end tests: real servers on loopback port 0 and the
//! real `terminalwire` binary as a child process.
//!
//! # Layout
//!
//! - [`TestServer`]: the `hello` example app, or an app of the test's own, in
//!   process on `127.0.0.1:0`; shuts down when dropped.
//! - [`ScriptedServer`]: a bare WebSocket server whose sessions a test
//!   scripts frame by frame, to play a broken or hostile server.
//! - [`Client`]: runs the `terminalwire` binary and collects its output.
//! - [`client_binary`]: where that binary is.
//! - [`relay`]: a man in the middle that switches targets, records and tampers.
//! - [`cutter`]: a proxy that resets connections after a seeded byte count.
//! - [`chaos`]: a proxy that breaks connections in seeded ways (resets of
//!   one side or both, half-closes, stalls, black holes), an app with
//!   checkable workloads, and a checker of whole runs (`tests/chaos.rs`).
//!
//! The tests themselves live in `tests/`.

#![forbid(unsafe_code)]
#![allow(clippy::unwrap_used, reason = "a test harness fails loudly")]

pub mod chaos;
pub mod cutter;
pub mod pattern;
pub mod process;
pub mod tmux;
pub mod wire;

pub mod relay;
use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::OnceLock;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use terminalwire_protocol::secure::{Opener, Responder, Sealer, StaticKey};
use terminalwire_protocol::{ClientFrame, ServerFrame, codec};
use terminalwire_server::Terminal;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::handshake::server::{Request, Response};
use tokio_tungstenite::tungstenite::http::HeaderValue;

/// How long a client process may run before the test fails as hung.
pub const CLIENT_DEADLINE: Duration = Duration::from_secs(60);

/// Resolves when a [`TestServer`] is asked to stop.
pub type ShutdownSignal = std::pin::Pin<Box<dyn Future<Output = ()> + Send + 'static>>;

/// An app serving on a loopback port until dropped.
#[derive(Debug)]
pub struct TestServer {
    addr: SocketAddr,
    shutdown: Option<oneshot::Sender<()>>,
    task: JoinHandle<std::io::Result<()>>,
}

impl TestServer {
    /// Starts the `hello` example app on `127.0.0.1:0`.
    pub async fn hello() -> TestServer {
        TestServer::start(hello::run).await
    }

    /// Starts an app whose terminal runs `terminal` at `/terminal`.
    pub async fn with_terminal(terminal: Terminal) -> TestServer {
        TestServer::start(move |listener, shutdown| async move {
            let app = axum::Router::new().route("/terminal", terminal.route());
            terminal.serve_app(listener, app, shutdown).await
        })
        .await
    }

    /// Starts `serve(listener, shutdown)` on `127.0.0.1:0`: an app with
    /// routes of its own.
    pub async fn start<S, Fut>(serve: S) -> TestServer
    where
        S: FnOnce(TcpListener, ShutdownSignal) -> Fut,
        Fut: Future<Output = std::io::Result<()>> + Send + 'static,
    {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (shutdown, signal) = oneshot::channel::<()>();
        let task = tokio::spawn(serve(
            listener,
            Box::pin(async move {
                let _ = signal.await;
            }),
        ));
        TestServer {
            addr,
            shutdown: Some(shutdown),
            task,
        }
    }

    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The terminal endpoint, `ws://127.0.0.1:PORT/terminal`.
    pub fn url(&self) -> String {
        format!("ws://{}/terminal", self.addr)
    }

    /// Asks the app to shut down gracefully and waits until it has.
    pub async fn stop(mut self) -> std::io::Result<()> {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
        (&mut self.task).await.unwrap()
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
    }
}

/// A WebSocket server whose every session runs a script written by the test.
#[derive(Debug)]
pub struct ScriptedServer {
    addr: SocketAddr,
    task: JoinHandle<()>,
    fingerprint: String,
}

/// One scripted session's socket.
///
/// The scripted server runs the real secure handshake with its own identity
/// key, so frames are sealed as the protocol requires; a script can still
/// send raw WebSocket messages ([`ScriptedSocket::send_unsealed`]).
#[derive(Debug)]
pub struct ScriptedSocket {
    socket: WebSocketStream<TcpStream>,
    sealer: Sealer,
    opener: Opener,
    /// The fingerprint of the client's device key.
    pub device: String,
}

impl ScriptedSocket {
    /// Seals `bytes` as one frame (whatever they contain) and sends it.
    pub async fn send_sealed(&mut self, bytes: &[u8]) {
        if let Ok(sealed) = self.sealer.seal(bytes) {
            let _ = self.socket.send(Message::Binary(sealed.into())).await;
        }
    }

    /// Seals each frame and sends them all with one flush, so that they
    /// reach the client together (most likely in one read).
    pub async fn send_frames_together(&mut self, frames: &[ServerFrame]) {
        for frame in frames {
            let Ok(sealed) = self.sealer.seal(&codec::encode(frame)) else {
                return;
            };
            if self
                .socket
                .feed(Message::Binary(sealed.into()))
                .await
                .is_err()
            {
                return;
            }
        }
        let _ = self.socket.flush().await;
    }

    /// Sends `count` WebSocket pings of `payload`, reading nothing; returns
    /// once the client took them (all but what the sockets hold).
    pub async fn send_pings(&mut self, count: usize, payload: &[u8]) {
        let payload = tokio_tungstenite::tungstenite::Bytes::copy_from_slice(payload);
        for _ in 0..count {
            if self
                .socket
                .feed(Message::Ping(payload.clone()))
                .await
                .is_err()
            {
                return;
            }
        }
        let _ = self.socket.flush().await;
    }

    /// The TCP connection under the WebSocket (to look at its queues).
    pub fn tcp(&self) -> &TcpStream {
        self.socket.get_ref()
    }

    /// Sends a binary WebSocket message as it is, not sealed.
    pub async fn send_unsealed(&mut self, bytes: Vec<u8>) {
        let _ = self.socket.send(Message::Binary(bytes.into())).await;
    }

    /// The next opened frame's bytes; `None` when the client goes or sends
    /// something that does not open.
    pub async fn next_opened(&mut self) -> Option<Vec<u8>> {
        loop {
            match self.socket.next().await? {
                Ok(Message::Binary(bytes)) => return self.opener.open(&bytes).ok(),
                Ok(Message::Ping(_) | Message::Pong(_)) => continue,
                _ => return None,
            }
        }
    }
}

/// The secure handshake as the responder.
async fn secure_accept(
    mut socket: WebSocketStream<TcpStream>,
    identity: &StaticKey,
) -> Option<ScriptedSocket> {
    let next_binary = async |socket: &mut WebSocketStream<TcpStream>| loop {
        match socket.next().await? {
            Ok(Message::Binary(bytes)) => return Some(bytes.to_vec()),
            Ok(Message::Ping(_) | Message::Pong(_)) => continue,
            _ => return None,
        }
    };
    let first = next_binary(&mut socket).await?;
    let (responder, second) = Responder::respond(identity, &first).ok()?;
    socket.send(Message::Binary(second.into())).await.ok()?;
    let third = next_binary(&mut socket).await?;
    let (device, channel) = responder.finish(&third).ok()?;
    let (sealer, opener) = channel.split();
    Some(ScriptedSocket {
        socket,
        sealer,
        opener,
        device: terminalwire_protocol::secure::fingerprint(&device),
    })
}

impl ScriptedServer {
    /// Serves on `127.0.0.1:0`; accepts the WebSocket upgrade, echoing the
    /// terminalwire subprotocol when `echo_subprotocol`, and runs `script`.
    pub async fn start<F, Fut>(echo_subprotocol: bool, script: F) -> ScriptedServer
    where
        F: Fn(ScriptedSocket) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let script = std::sync::Arc::new(script);
        let identity = std::sync::Arc::new(StaticKey::generate().unwrap());
        let fingerprint = identity.fingerprint();
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let script = script.clone();
                let identity = identity.clone();
                tokio::spawn(async move {
                    #[allow(
                        clippy::result_large_err,
                        reason = "the signature tungstenite asks for"
                    )]
                    let callback = |_request: &Request, mut response: Response| {
                        if echo_subprotocol {
                            response.headers_mut().insert(
                                "sec-websocket-protocol",
                                HeaderValue::from_static(terminalwire_protocol::SUBPROTOCOL),
                            );
                        }
                        Ok(response)
                    };
                    if let Ok(socket) = tokio_tungstenite::accept_hdr_async(stream, callback).await
                        && let Some(socket) = secure_accept(socket, &identity).await
                    {
                        script(socket).await;
                    }
                });
            }
        });
        ScriptedServer {
            addr,
            task,
            fingerprint,
        }
    }

    /// [`start`](Self::start) for a script that needs something known
    /// only once the server's address is (a path in the storage folder of
    /// its authority, say): the script gets it, with the client welcomed,
    /// once the test has set it; a client that comes earlier is dropped.
    pub async fn start_welcomed_with<T, F, Fut>(
        script: F,
    ) -> (ScriptedServer, std::sync::Arc<OnceLock<T>>)
    where
        T: Clone + Send + Sync + 'static,
        F: Fn(ScriptedSocket, T) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let later: std::sync::Arc<OnceLock<T>> = std::sync::Arc::default();
        let given = later.clone();
        let script = std::sync::Arc::new(script);
        let server = ScriptedServer::start(true, move |mut socket| {
            let (value, script) = (given.get().cloned(), script.clone());
            async move {
                let Some(value) = value else { return };
                if welcome(&mut socket).await {
                    script(socket, value).await;
                }
            }
        })
        .await;
        (server, later)
    }

    /// The fingerprint of this server's identity key.
    pub fn fingerprint(&self) -> &str {
        &self.fingerprint
    }

    /// The endpoint URL.
    pub fn url(&self) -> String {
        format!("ws://{}/terminal", self.addr)
    }
}

impl Drop for ScriptedServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Reads the client's next frame; `None` when the socket ends or sends
/// something that is not a frame.
pub async fn next_client_frame(socket: &mut ScriptedSocket) -> Option<ClientFrame> {
    codec::decode(&socket.next_opened().await?).ok()
}

/// A welcome for a scripted session: protocol version 1, default window
/// and chunk size, no resuming.
pub fn scripted_welcome() -> ServerFrame {
    ServerFrame::Welcome(scripted_welcome_fields())
}

/// The fields of [`scripted_welcome`], for a script that changes some.
pub fn scripted_welcome_fields() -> terminalwire_protocol::frame::Welcome {
    terminalwire_protocol::frame::Welcome {
        version: 1,
        server: terminalwire_protocol::frame::Software {
            name: "scripted".into(),
            version: "0".into(),
        },
        session_id: "scripted".into(),
        capabilities: Vec::new(),
        window: terminalwire_protocol::DEFAULT_WINDOW,
        max_chunk: terminalwire_protocol::DEFAULT_MAX_CHUNK,
        resume: None,
    }
}

/// Sends one server frame.
pub async fn send_server_frame(socket: &mut ScriptedSocket, frame: &ServerFrame) {
    socket.send_sealed(&codec::encode(frame)).await;
}

/// Waits for the client's hello and answers it with [`scripted_welcome`];
/// false when the client went away first.
pub async fn welcome(socket: &mut ScriptedSocket) -> bool {
    if next_client_frame(socket).await.is_none() {
        return false;
    }
    send_server_frame(socket, &scripted_welcome()).await;
    true
}

/// Sends `op` as request `id` and waits for its answer, skipping other
/// frames; `None` when the client went away.
pub async fn ask(
    socket: &mut ScriptedSocket,
    id: u64,
    op: terminalwire_protocol::frame::Operation,
) -> Option<terminalwire_protocol::frame::Response> {
    let request = terminalwire_protocol::frame::Request {
        id: terminalwire_protocol::RequestId(id),
        op,
    };
    send_server_frame(socket, &ServerFrame::Request(request)).await;
    loop {
        if let ClientFrame::Response(response) = next_client_frame(socket).await? {
            return Some(response);
        }
    }
}

/// The `terminalwire` binary under test: `$TERMINALWIRE_BIN`, else the one
/// in this test executable's target directory, brought up to date once per
/// test process (`cargo test -p terminalwire-tests` alone would not rebuild
/// another package's binary, and a stale one would test old code).
pub fn client_binary() -> PathBuf {
    static BINARY: OnceLock<PathBuf> = OnceLock::new();
    BINARY.get_or_init(locate_and_build_client).clone()
}

fn locate_and_build_client() -> PathBuf {
    if let Some(path) = std::env::var_os("TERMINALWIRE_BIN") {
        return PathBuf::from(path);
    }
    // target/<profile>/deps/<test-exe> → target/<profile>/terminalwire
    let exe = std::env::current_exe().unwrap();
    let profile_dir = exe.parent().and_then(|deps| deps.parent()).unwrap();
    let target_dir = profile_dir.parent().unwrap();
    let profile = match profile_dir.file_name().and_then(|name| name.to_str()) {
        Some("debug") => "dev",
        Some(other) => other,
        None => panic!("unexpected test executable path {}", exe.display()),
    };
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let status = std::process::Command::new(cargo)
        .args([
            "build",
            "--quiet",
            "-p",
            "terminalwire-client",
            // `terminalwire` and `terminalwire-exec` (launchers).
            "--bins",
        ])
        .args(["--profile", profile])
        .arg("--target-dir")
        .arg(target_dir)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        // Set for the test process, it would differ from the outer build's
        // environment and make build scripts that watch it rebuild
        // every time, inside and outside.
        .env_remove("CARGO_MANIFEST_DIR")
        .status()
        .unwrap();
    assert!(status.success(), "building the terminalwire client failed");
    profile_dir.join(format!("terminalwire{}", std::env::consts::EXE_SUFFIX))
}

/// What a client run produced.
#[derive(Debug)]
pub struct Outcome {
    /// The exit status (`None` if killed by a signal).
    pub status: Option<i32>,
    /// Everything written to stdout.
    pub stdout: Vec<u8>,
    /// Everything written to stderr.
    pub stderr: Vec<u8>,
}

impl Outcome {
    /// stdout as text.
    pub fn stdout_text(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }

    /// stderr as text.
    pub fn stderr_text(&self) -> String {
        String::from_utf8_lossy(&self.stderr).into_owned()
    }
}

/// One run of the real client binary, with its own empty terminalwire home.
#[derive(Debug)]
pub struct Client {
    args: Vec<String>,
    stdin: Option<Vec<u8>>,
    envs: Vec<(String, String)>,
    program: Option<PathBuf>,
    stdout_file: Option<PathBuf>,
    stderr_lines: Option<tokio::sync::mpsc::UnboundedSender<String>>,
}

impl Client {
    /// `terminalwire ARGS...`
    pub fn new<I, S>(args: I) -> Client
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        Client {
            args: args.into_iter().map(Into::into).collect(),
            stdin: None,
            envs: Vec::new(),
            program: None,
            stdout_file: None,
            stderr_lines: None,
        }
    }

    /// Also sends each line of stderr to `lines` as it comes (the outcome
    /// still has all of it), for what a running client shows.
    pub fn stderr_lines(mut self, lines: tokio::sync::mpsc::UnboundedSender<String>) -> Client {
        self.stderr_lines = Some(lines);
        self
    }

    /// Feeds `bytes` on stdin (then end of file); stdin is null otherwise.
    pub fn stdin(mut self, bytes: impl Into<Vec<u8>>) -> Client {
        self.stdin = Some(bytes.into());
        self
    }

    /// Runs `program` (e.g. an installed launcher) instead of the client
    /// binary, with the client's folder first on `PATH` so that
    /// `#!/usr/bin/env terminalwire-exec` finds the one under test.
    pub fn program(mut self, program: impl Into<PathBuf>) -> Client {
        self.program = Some(program.into());
        self
    }

    /// Sends stdout to a new file at `path` (as `> path` would) instead of
    /// a pipe; the outcome's `stdout` is then empty.
    pub fn stdout_to_file(mut self, path: impl Into<PathBuf>) -> Client {
        self.stdout_file = Some(path.into());
        self
    }

    /// Sets an environment variable for the client.
    pub fn env(mut self, key: &str, value: &str) -> Client {
        self.envs.push((key.into(), value.into()));
        self
    }

    /// Runs the client to completion; fails the test if it runs longer than
    /// [`CLIENT_DEADLINE`].
    pub async fn run(self) -> Outcome {
        let home = tempfile::tempdir().unwrap();
        let binary = client_binary();
        let mut command = match &self.program {
            Some(program) => {
                let mut command = tokio::process::Command::new(program);
                let bin_dir = binary.parent().unwrap().to_path_buf();
                let path = std::env::var_os("PATH").unwrap_or_default();
                let path = std::env::join_paths(
                    std::iter::once(bin_dir).chain(std::env::split_paths(&path)),
                )
                .unwrap();
                command.env("PATH", path);
                command
            }
            None => tokio::process::Command::new(binary),
        };
        command
            .args(&self.args)
            .env("TERMINALWIRE_HOME", home.path())
            .env_remove("CLICOLOR_FORCE")
            .env_remove("TERMINALWIRE_LOG")
            .stdin(if self.stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(match &self.stdout_file {
                Some(path) => Stdio::from(std::fs::File::create(path).unwrap()),
                None => Stdio::piped(),
            })
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        for (key, value) in &self.envs {
            command.env(key, value);
        }
        let mut child = command.spawn().unwrap();
        let teeing = self.stderr_lines.map(|lines| {
            let stderr = child.stderr.take().unwrap();
            tokio::spawn(async move {
                use tokio::io::AsyncBufReadExt;
                let mut stderr = tokio::io::BufReader::new(stderr);
                let mut all = Vec::new();
                let mut line = Vec::new();
                while stderr.read_until(b'\n', &mut line).await.unwrap_or(0) > 0 {
                    let _ = lines.send(String::from_utf8_lossy(&line).into_owned());
                    all.append(&mut line);
                }
                all
            })
        });
        if let Some(bytes) = self.stdin {
            let mut stdin = child.stdin.take().unwrap();
            tokio::spawn(async move {
                // The client may exit before reading everything.
                let _ = stdin.write_all(&bytes).await;
            });
        }
        let output = tokio::time::timeout(CLIENT_DEADLINE, child.wait_with_output())
            .await
            .unwrap_or_else(|_| panic!("client {:?} hung", self.args))
            .unwrap();
        let stderr = match teeing {
            Some(teeing) => teeing.await.unwrap(),
            None => output.stderr,
        };
        Outcome {
            status: output.status.code(),
            stdout: output.stdout,
            stderr,
        }
    }
}

/// Sends one raw HTTP/1.1 form request (`head`: `POST /path`) to `addr`
/// with `headers` (each `Name: value\r\n`) and `body`, and returns the
/// whole response.
pub async fn raw_http(addr: SocketAddr, head: &str, headers: &str, body: &str) -> String {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let request = format!(
        "{head} HTTP/1.1\r\nHost: {addr}\r\n{headers}Content-Type: application/x-www-form-urlencoded\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    response
}

/// The status code of a raw HTTP response.
pub fn status_of(response: &str) -> u16 {
    response
        .split_whitespace()
        .nth(1)
        .and_then(|status| status.parse().ok())
        .unwrap()
}

/// Polls `condition` until it holds (what the server's state shows, where
/// no event says it changed); fails the test after `deadline`.
pub async fn eventually(what: &str, deadline: Duration, condition: impl Fn() -> bool) {
    let start = std::time::Instant::now();
    while !condition() {
        assert!(start.elapsed() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
