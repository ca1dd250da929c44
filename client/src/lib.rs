//! The terminalwire thin client.
//!
//! `terminalwire URL [ARGS...]` opens a WebSocket to a web app's terminal
//! endpoint, introduces itself with a hello, then writes what the server sends
//! to stdout/stderr and answers the server's requests, until the server's exit
//! frame gives the status it exits with. Every failure is one clear line on
//! stderr and a documented exit status ([`exit_code`]).
//!
//! # Layout
//!
//! - [`admin`]: `terminalwire entitlement ...` and `terminalwire authority ...`.
//! - [`cli`]: argument parsing (`terminalwire [OPTIONS] URL [ARGS...]`).
//! - [`connect`]: URL checks and the WebSocket connection.
//! - [`facts`]: what the hello reports about this machine and terminal.
//! - [`session`]: the protocol engine, generic over the WebSocket's byte stream
//!   and the local streams, so tests drive it in memory.
//! - [`error`]: [`ClientError`] and the exit codes.

#![forbid(unsafe_code)]

pub mod admin;
pub mod cli;
pub mod connect;
pub mod error;
pub mod facts;
pub mod session;

use std::ffi::OsString;

pub use error::{ClientError, exit_code};
pub use session::{LocalIo, SessionConfig};

/// Runs the client with these process arguments and returns its exit status.
/// Prints errors itself.
pub fn main_with_args(args: impl IntoIterator<Item = OsString>) -> u8 {
    let args: Vec<OsString> = args.into_iter().collect();
    if admin::is_admin(args.get(1..).unwrap_or_default()) {
        return admin::main(args);
    }
    let invocation = match cli::parse(args) {
        Ok(invocation) => invocation,
        Err(cli::ParseOutcome::Exit(code)) => return code,
    };
    init_logging(invocation.verbose);
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("terminalwire: cannot start: {error}");
            return exit_code::INTERNAL;
        }
    };
    let outcome = runtime.block_on(run(invocation));
    // A stdin read still pending on tokio's blocking pool must not hold the
    // process open after the session has ended.
    runtime.shutdown_background();
    match outcome {
        Ok(status) => status,
        Err(error) => {
            if !error.is_silent() {
                eprintln!("terminalwire: {error}");
            }
            error.exit_code()
        }
    }
}

/// Connects and runs one remote command on the process's own terminal.
pub async fn run(invocation: cli::Invocation) -> Result<u8, ClientError> {
    let target = connect::Target::parse(&invocation.url)?;
    let hello = facts::hello(
        &target,
        invocation.program_name.clone(),
        invocation.args.clone(),
    )?;
    let config = SessionConfig {
        handshake_timeout: invocation.connect_timeout,
        ..SessionConfig::default()
    };
    let socket = connect::connect(&target, config.handshake_timeout).await?;
    session::run(socket, hello, LocalIo::process(), &config).await
}

fn init_logging(verbose: u8) {
    // Logs go to stderr and only when asked for: stdout belongs to the app.
    let default = match verbose {
        0 => "off",
        1 => "terminalwire=info,terminalwire_client=info",
        _ => "debug",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_env("TERMINALWIRE_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}
