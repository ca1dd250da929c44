//! Server SDK of terminalwire: mount a remote command-line interface in an axum app.
//!
//! The app writes its command as an async function of a [`Context`]; users run
//! it with the `terminalwire` client. The app never sees the wire format: the
//! context offers streams, client facts and client resources (files, folders,
//! environment, browser), so other transports (such as Terminalwire v1 clients)
//! can drive the same app.
//!
//! ```no_run
//! use axum::{Router, routing::get};
//! use terminalwire_server::{Config, Context, ServerIdentity, Terminal};
//!
//! async fn cli(ctx: Context) -> anyhow::Result<()> {
//!     let name = ctx.args().first().cloned().unwrap_or_else(|| "world".into());
//!     ctx.stdout().println(format!("Hello, {name}!")).await?;
//!     Ok(())
//! }
//!
//! # async fn serve() -> std::io::Result<()> {
//! // The key clients pin: it must outlive restarts (with a new one every
//! // client refuses the server). `Terminal::new` makes a random one, for
//! // tests.
//! let identity = ServerIdentity::load_or_create("myapp-identity.key".as_ref())?;
//! let config = Config {
//!     identity: Some(identity),
//!     ..Config::default()
//! };
//! let terminal = Terminal::with_config(cli, config);
//! let app = Router::new()
//!     .route("/", get(|| async { "a web app" }))
//!     .route("/terminal", terminal.route());
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
//! // Sets TCP_NODELAY on each connection (see `TerminalConnection`), and drains
//! // running commands once the shutdown signal comes.
//! terminal
//!     .serve_app(listener, app, terminalwire_server::shutdown_signal())
//!     .await
//! # }
//! ```
//!
//! # Testing an app
//!
//! With the cargo feature `testing` (off by default; for an app's
//! `[dev-dependencies]`: `terminalwire-server = { version = "...", features =
//! ["testing"] }`), `terminalwire_server::testing::TestClient` runs the
//! app's command without a network or the client binary: a scripted client
//! that does the secure handshake and hello of the real one over an
//! in-memory transport, so the command runs in the SDK's real session code.
//! It answers stdin from the bytes it is given, files and folders inside a
//! storage folder of the test's (everything else is denied as the real
//! client denies a path not granted), the environment variables it is
//! given, and records the browser opens:
//!
//! ```
//! # #[cfg(feature = "testing")]
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> anyhow::Result<()> {
//! use terminalwire_server::{Context, Terminal, testing::TestClient};
//!
//! // The app's command: saves its arguments in the client's storage folder.
//! let terminal = Terminal::new(|ctx: Context| async move {
//!     let text = ctx.args().join(" ");
//!     let file = ctx.storage_path("last.txt").expect("a storage folder");
//!     ctx.file().write(&file, &text).await?;
//!     ctx.stdout().println(format!("Saved: {text}")).await?;
//!     anyhow::Ok(())
//! });
//!
//! let folder = tempfile::tempdir()?;
//! let out = TestClient::new()
//!     .args(["Water", "the plants"])
//!     .storage(folder.path())
//!     .terminal(80, 24)
//!     .run(&terminal)
//!     .await;
//! assert_eq!((out.status, out.stdout_text()), (0, "Saved: Water the plants\n".into()));
//! let saved = std::fs::read_to_string(folder.path().join("last.txt"))?;
//! assert_eq!(saved, "Water the plants");
//! # Ok(())
//! # }
//! # #[cfg(not(feature = "testing"))]
//! # fn main() {}
//! ```
//!
//! The `testing` module's docs list what it answers and how; the `tasks`
//! example's unit tests use it.
//!
//! # Layout
//!
//! - [`terminal`]: [`Terminal`], the service an app mounts, its [`Config`] and
//!   graceful shutdown.
//! - [`accept`]: the accept loop of `serve_app` and `tls::serve` (a time-out
//!   for request headers, the peer's address on each request).
//! - [`devices`]: approval of new devices and revocation
//!   ([`devices::DeviceRegistry`]).
//! - [`identity`]: the server's long-term key ([`ServerIdentity`]) that
//!   clients pin.
//! - [`login`]: browser login ([`login::BrowserLogins`]): a command opens a
//!   one-time, short-lived page of the app and waits until the user approves.
//! - [`local`]: local per-user mode on an owner-only Unix socket
//!   ([`local::LocalListener`]), peers checked by user id.
//! - [`context`]: [`Context`] handed to the app's command, [`Output`] writers,
//!   client and terminal facts.
//! - [`resources`]: the client's stdin, files, directories, environment and
//!   browser ([`Context::file`], [`Context::dir`], ...), checked by the client
//!   against the user's entitlements.
//! - [`streams`]: tokio `AsyncRead`/`AsyncWrite` on the client's stdin,
//!   stdout/stderr and files ([`Output::writer`], `ctx.stdin().reader()`).
//! - [`outcome`]: how a command's return value becomes an exit status ([`Exit`],
//!   [`Exit::with_message`]'s [`Failure`], [`IntoOutcome`]).
//! - [`cli`]: clap integration (help, version and usage errors rendered like a
//!   local program).
//! - `testing` (feature `testing`, off by default): `testing::TestClient`
//!   runs a command through the SDK's session code in memory, for the
//!   app's own tests (no network, no client binary; see "Testing an app"
//!   above).
//! - [`tls`] (feature `tls`, on by default): serve the app over TLS (`wss://`)
//!   with rustls, and self-signed development certificates.
//! - [`tokens`]: app sessions saved on the client, short-lived, rotated and
//!   bound to the device key ([`tokens::TokenIssuer`], [`Context::session`]).
//! - [`transport`]: the byte-frame transport a session runs over (axum
//!   WebSockets, or anything implementing [`transport::Transport`]).
//! - `session` (private): the protocol engine of one connection.
//! - `files` (private): the files the SDK keeps (identity key, session
//!   tokens' secret, device registry, development certificates), written
//!   whole or not at all.
//! - `pending` (private): requests waiting for answers, and the input of
//!   reads a command gave up (kept for its next read).
//! - `per_address` (private): what each client address holds at once
//!   (sessions, TLS handshakes), IPv6 clients counted by their /64.

#![forbid(unsafe_code)]

pub mod accept;
pub mod cli;
pub mod context;
pub mod devices;
mod files;
pub mod identity;
pub mod local;
pub mod login;
pub mod outcome;
mod pending;
mod per_address;
pub mod resources;
mod session;
pub mod streams;
pub mod terminal;
#[cfg(feature = "testing")]
pub mod testing;
#[cfg(feature = "tls")]
pub mod tls;
pub mod tokens;
pub mod transport;

pub use context::{
    ClientFeatures, ClientInfo, ColorLevel, Context, Denial, Key, Output, ResourceError,
    StreamInfo, StreamKind, TerminalInfo,
};
pub use identity::ServerIdentity;
pub use outcome::{Exit, Failure, IntoOutcome, Outcome};
pub use terminal::{Config, Terminal, TerminalConnection, shutdown_signal};
