//! `terminalwire-bench`: measures terminalwire side by side with what users
//! would pick instead (OpenSSH, a raw WebSocket, curl) on loopback, in one
//! run, and writes `BENCHMARKS.md`.
//!
//! ```text
//! bash bench/run.sh            # release build, then every figure (a few minutes)
//! bash bench/run.sh --quick    # small sizes, one run each (CI: the harness must not rot)
//! ```
//!
//! The binary also plays the servers and the raw client it measures, each as
//! its own process (hidden subcommands `serve`, `raw-serve`, `raw-client`, `tcp-echo-serve`,
//! `tcp-ping-pong`, `tcp-stream`).
//!
//! # Layout
//!
//! - `orchestrate`: starts the servers, runs every figure, collects samples.
//!
//! Figure 6 also runs a second build of this binary and of the client, made
//! with the bench-only, insecure `terminalwire-protocol/insecure-plaintext-bench`
//! feature (no end-to-end encryption), to measure what the encryption costs.
//! - `app`: the bench app (a terminalwire server with measuring commands).
//! - `raw`: the raw tokio-tungstenite server and client.
//! - `ssh`: an unprivileged OpenSSH server on a high loopback port.
//! - `idle`: thousands of idle sessions held by in-process clients.
//! - `report`: the figures and `BENCHMARKS.md`.
//! - `stats`, `procfs`: medians and spreads; memory and machine facts.

#![forbid(unsafe_code)]

mod app;
mod idle;
mod load;
mod orchestrate;
mod procfs;
mod raw;
mod report;
mod ssh;
mod stats;

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Parser, Subcommand};

/// Benchmarks of terminalwire against OpenSSH, raw WebSocket and curl.
#[derive(Debug, Parser)]
#[command(name = "terminalwire-bench", version)]
struct Cli {
    /// Small sizes and one or two runs each (under a minute): checks that
    /// the harness works, not the speed.
    #[arg(long)]
    quick: bool,
    /// Where to write the report (default: BENCHMARKS.md at the workspace
    /// root; with --quick, bench-quick.md next to this executable).
    #[arg(long)]
    output: Option<PathBuf>,
    /// The terminalwire client binary (default: $TERMINALWIRE_BIN, else
    /// `terminalwire` next to this executable).
    #[arg(long)]
    client: Option<PathBuf>,
    /// Do not install openssh-server when sshd is missing.
    #[arg(long)]
    no_ssh_install: bool,
    /// Folder of the `terminalwire` and `terminalwire-bench` binaries built
    /// with the bench-only, insecure `terminalwire-protocol/insecure-plaintext-bench`
    /// feature, for figure 6's "E2E off" rows (default: `plaintext/release`
    /// in this executable's target folder, where bench/run.sh builds them).
    #[arg(long)]
    plaintext_dir: Option<PathBuf>,
    /// Run only these figures (1-6; repeatable).
    #[arg(long = "figure", value_parser = clap::value_parser!(u8).range(1..=6))]
    figures: Vec<u8>,
    /// Leave Nagle's algorithm on in the bench app's connections (to
    /// measure what an app that does not set TCP_NODELAY gets).
    #[arg(long, hide = true)]
    nagle: bool,
    /// WebSocket read buffer of the bench app and the raw server, in bytes
    /// (default: tungstenite's 128 KiB), to measure that setting.
    #[arg(long, hide = true)]
    read_buffer: Option<usize>,
    #[command(subcommand)]
    role: Option<Role>,
}

/// The processes the benchmark starts of itself.
#[derive(Debug, Subcommand)]
enum Role {
    /// The bench app.
    #[command(hide = true)]
    Serve {
        /// Address to listen on.
        #[arg(long, default_value = "127.0.0.1:0")]
        listen: SocketAddr,
        /// Leave Nagle's algorithm on (no TCP_NODELAY) on accepted connections.
        #[arg(long)]
        nagle: bool,
        /// Serve wss:// with a self-signed certificate written to this folder.
        #[arg(long)]
        tls_dir: Option<PathBuf>,
        /// WebSocket read buffer in bytes (default: the SDK's, tungstenite's 128 KiB).
        #[arg(long)]
        read_buffer: Option<usize>,
        /// Tokio worker threads (default: one per CPU).
        #[arg(long, value_parser = clap::value_parser!(u16).range(1..))]
        workers: Option<u16>,
    },
    /// The raw WebSocket server.
    #[command(hide = true)]
    RawServe {
        /// Address to listen on.
        #[arg(long, default_value = "127.0.0.1:0")]
        listen: SocketAddr,
        /// WebSocket read buffer in bytes (default: tungstenite's 128 KiB).
        #[arg(long)]
        read_buffer: Option<usize>,
    },
    /// A TCP echo server (std::net, a thread per connection, blocking or
    /// polling as each client asks): the machine's round-trip floor, under
    /// any WebSocket or async runtime.
    #[command(hide = true)]
    TcpEchoServe {
        /// Address to listen on.
        #[arg(long, default_value = "127.0.0.1:0")]
        listen: SocketAddr,
    },
    /// `N` TCP round trips of 52 bytes to a `tcp-echo-serve`, blocking or
    /// polling; prints `n=N secs=S`.
    #[command(hide = true)]
    TcpPingPong {
        /// The echo server's `ADDR:PORT`.
        addr: SocketAddr,
        /// Round trips.
        n: u64,
        /// Both ends poll their socket for 20 µs before they block.
        #[arg(long)]
        poll: bool,
    },
    /// Receives `BYTES` over plain TCP from a `tcp-echo-serve` (64 KiB
    /// writes) and writes them to stdout.
    #[command(hide = true)]
    TcpStream {
        /// The echo server's `ADDR:PORT`.
        addr: SocketAddr,
        /// Bytes to receive.
        bytes: u64,
    },
    /// The load test: many concurrent sessions with mixed requests against
    /// one bench app process; zero errors required.
    Load {
        /// Concurrent sessions.
        #[arg(long, default_value_t = 1000)]
        sessions: usize,
        /// Mixed requests per session.
        #[arg(long, default_value_t = 100)]
        requests: u64,
    },
    /// The raw WebSocket client: `stream BYTES` or `echo N IN_FLIGHT`.
    #[command(hide = true)]
    RawClient {
        /// The raw server, `ws://ADDR/`.
        url: String,
        /// `stream` or `echo`.
        kind: String,
        /// Bytes to stream, or round trips.
        count: u64,
        /// Echo messages in flight.
        #[arg(default_value_t = 1)]
        in_flight: u64,
        /// WebSocket read buffer in bytes (default: tungstenite's 128 KiB).
        #[arg(long)]
        read_buffer: Option<usize>,
    },
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let result = match cli.role {
        Some(Role::Serve {
            listen,
            nagle,
            tls_dir,
            read_buffer,
            workers,
        }) => {
            if !terminalwire_protocol::secure::ENCRYPTED {
                eprintln!(
                    "terminalwire-bench serve: built with insecure-plaintext-bench: \
                     NO end-to-end encryption"
                );
            }
            multi_thread_with(workers)
                .and_then(|rt| rt.block_on(app::serve(listen, !nagle, tls_dir, read_buffer)))
        }
        Some(Role::RawServe {
            listen,
            read_buffer,
        }) => multi_thread().and_then(|rt| rt.block_on(raw::serve(listen, read_buffer))),
        Some(Role::RawClient {
            url,
            kind,
            count,
            in_flight,
            read_buffer,
        }) => {
            let mode = match kind.as_str() {
                "stream" => Ok(raw::Mode::Stream { bytes: count }),
                "echo" => Ok(raw::Mode::Echo {
                    n: count,
                    in_flight,
                }),
                other => Err(anyhow::anyhow!("unknown raw client mode {other:?}")),
            };
            // Like the terminalwire client: one thread.
            mode.and_then(|mode| {
                tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .map_err(anyhow::Error::from)
                    .and_then(|rt| rt.block_on(raw::client(&url, mode, read_buffer)))
            })
        }
        Some(Role::TcpEchoServe { listen }) => raw::tcp_echo_serve(listen),
        Some(Role::TcpPingPong { addr, n, poll }) => raw::tcp_ping_pong(addr, n, poll),
        Some(Role::TcpStream { addr, bytes }) => raw::tcp_stream(addr, bytes),
        Some(Role::Load { sessions, requests }) => orchestrate::load(sessions, requests),
        None => orchestrate::run(orchestrate::Options {
            quick: cli.quick,
            output: cli.output,
            client: cli.client,
            plaintext_dir: cli.plaintext_dir,
            install_ssh: !cli.no_ssh_install,
            figures: cli.figures,
            tuning: orchestrate::Tuning {
                nagle: cli.nagle,
                read_buffer: cli.read_buffer,
            },
        }),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("terminalwire-bench: {error:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn multi_thread() -> anyhow::Result<tokio::runtime::Runtime> {
    multi_thread_with(None)
}

/// Tokio's multi-threaded runtime with `workers` worker threads (default:
/// one per CPU).
fn multi_thread_with(workers: Option<u16>) -> anyhow::Result<tokio::runtime::Runtime> {
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    if let Some(workers) = workers {
        builder.worker_threads(usize::from(workers));
    }
    Ok(builder.enable_all().build()?)
}

/// Prints a server's first stdout line (its contract with the orchestrator).
pub(crate) fn announce(line: &str) -> std::io::Result<()> {
    use std::io::Write;
    let mut stdout = std::io::stdout().lock();
    writeln!(stdout, "{line}")?;
    stdout.flush()
}

/// The bench app's allocator (also that of the raw WebSocket baseline,
/// which runs from this binary). With glibc's malloc, the 64 KiB buffers
/// of each streamed chunk are returned to the kernel and faulted back in:
/// a third of the server's CPU in figure 2 (bench/PROFILE.md). An app
/// chooses its allocator; the README recommends one for servers.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;
